"""Harness for the whole-daemon benchmarks (e2e, scaling, profile).

* :class:`Serve` runs ``python -m ecg_gateway serve`` as a subprocess with its JSON logs
  going to a file (parsed afterwards: the log timestamps are the stage clock).
* :class:`EhrProcess` is a real MLLP EHR in its own process that answers AA and records
  when each ORU arrived (control id, wall clock).
* :func:`corpus` turns real 500 Hz 12-lead recordings (CinC 2021 samples) into DICOM
  objects; :class:`StoreClient` sends them with pynetdicom, one association per ECG as carts
  do, open loop at a fixed rate or closed loop as fast as possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench._common import REPO, SHARED

ALL_CATEGORIES = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


# --- the daemon ------------------------------------------------------------------------------

def write_config(path: Path, db_url: str, **sections: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "database": {"url": db_url},
        "dicom": {"port": 0, "max_associations": 64, "max_connections_per_ip": 64},
        "hl7": {"port": 0},
        "http": {"port": 0},
        "logging": {"json_output": True, "level": "INFO"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


class Serve:
    """``ecg-gateway serve`` in a subprocess; stdout (JSON logs) goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, *args: str, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.log_path = log_path
        # as deployed (deploy/ecg-gateway.service, deploy/Dockerfile); the environment may override
        full_env = {"MALLOC_ARENA_MAX": "2", **os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [*(wrapper or []), sys.executable, "-m", "ecg_gateway", "serve", "--config", str(config), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, event: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in read_log(self.log_path):
                if record.get("event") == event:
                    return record
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"no {event!r} in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def started(self, model: bool = True) -> Serve:
        self.ports = self.wait_for("gateway_started")["ports"]
        if model:
            self.wait_for("worker_model_ready")
        return self

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name (labels dropped: summed)."""
        url = f"http://127.0.0.1:{self.ports['http']}/metrics"
        out: dict[str, float] = {}
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    key = name.split("{", 1)[0]
                    out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as fh:
        for line in fh:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


class LogTail:
    """Reads a growing JSON-lines log incrementally; keeps every record seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = ""
        self.counts: dict[str, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        with open(self.path) as fh:
            fh.seek(self._offset)
            data = fh.read()
            self._offset = fh.tell()
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                new.append(record)
                event = record.get("event", "")
                self.counts[event] = self.counts.get(event, 0) + 1
        self.records.extend(new)
        return new

    def wait_count(self, event: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self.counts.get(event, 0) >= count:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"]).timestamp()


def rss_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of one process, MB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mb": out.get("VmRSS", float("nan")), "peak_mb": out.get("VmHWM", float("nan"))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the EHR -------------------------------------------------------------------------------

def _ehr_main(conn: Any) -> None:
    sys.path.insert(0, str(REPO))
    from ecg_gateway.logs import configure_logging
    from ecg_gateway.mllp import serve_mllp
    from tests.ehr_peer import aa, control_id

    configure_logging("WARNING", json_output=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    received: list[tuple[str, float]] = []

    async def handler(payload: bytes, peer: str) -> bytes:
        received.append((control_id(payload), time.time()))
        return aa(payload)

    async def main() -> None:
        server = await serve_mllp(handler, "127.0.0.1", 0, max_frame_bytes=64 << 20,
                                  message_timeout_s=60, idle_timeout_s=3600, max_connections=16)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            conn.send(list(received))
        server.close()

    asyncio.run(main())


class EhrProcess:
    """A real MLLP EHR worklist in its own process (so it does not share our GIL)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_ehr_main, args=(child,), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()

    def received(self) -> dict[str, float]:
        """Control id -> first arrival time (wall clock)."""
        self._conn.send("dump")
        out: dict[str, float] = {}
        for cid, at in self._conn.recv():
            out.setdefault(cid, at)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()


# --- ECGs and the C-STORE client -------------------------------------------------------

def corpus(limit: int = 124, fs: float = 500.0, decimate: int = 1) -> tuple[list[Any], str]:
    """Real 10 s 12-lead recordings at 500 Hz as DICOM datasets (synthetic if no shared data);
    ``decimate`` keeps every n-th sample (a cheaper ECG, e.g. 250 Hz, for long runs)."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from tests.dicom_builders import LEADS, ecg_dataset, synthetic_signal_mv

    datasets = []
    heads = sorted((SHARED / "cinc2021-samples").glob("*/*.hea"))
    if heads:
        from scipy.io import loadmat

        for hea in heads:
            lines = hea.read_text().splitlines()
            n_leads, rec_fs, n = int(lines[0].split()[1]), float(lines[0].split()[2]), int(lines[0].split()[3])
            if rec_fs != fs or n != 5000 or n_leads != 12:
                continue
            specs = [line.split() for line in lines[1:13]]
            names = [{"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(s[-1].upper(), s[-1]) for s in specs]
            gains = np.array([float(s[2].split("/")[0]) for s in specs])
            signal = loadmat(str(hea.with_suffix(".mat")))["val"].astype(np.float64) / gains[:, None]
            order = [names.index(lead) for lead in LEADS]
            datasets.append(ecg_dataset(np.clip(signal[order], -80, 80)[:, ::decimate], fs / decimate))
            if len(datasets) >= limit:
                break
        return datasets, (f"{len(datasets)} CinC 2021 recordings (12 leads, 10 s @ {fs / decimate:g} Hz) "
                          "as DICOM 12-lead ECG")
    for i in range(min(limit, 16)):
        datasets.append(ecg_dataset(synthetic_signal_mv(fs / decimate, seed=i), fs / decimate))
    return datasets, f"{len(datasets)} synthetic 12-lead ECGs ({fs / decimate:g} Hz; shared data not found)"


@dataclass
class Sent:
    uid: str
    scheduled: float
    start: float
    end: float
    status: int


def _nodelay_connect() -> None:
    """pynetdicom's SCU leaves Nagle on; carts and our SCP do not wait 40 ms per PDU."""
    from pynetdicom import transport

    if getattr(transport.AssociationSocket.connect, "_nodelay", False):
        return
    original = transport.AssociationSocket.connect

    def connect(self: Any, address: Any) -> None:
        original(self, address)
        if self.socket is not None:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    connect._nodelay = True  # type: ignore[attr-defined]
    transport.AssociationSocket.connect = connect  # type: ignore[method-assign]


class StoreClient:
    """Sends DICOM ECGs to ``port``, one association per ECG, from a thread pool."""

    def __init__(self, port: int, datasets: list[Any], threads: int = 8, called_ae: str = "ECG_GATEWAY") -> None:
        from pynetdicom import AE

        _nodelay_connect()
        self.port = port
        self.called_ae = called_ae
        self.datasets = datasets
        self._pool = ThreadPoolExecutor(threads)
        self._local = threading.local()
        self._contexts = sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets})
        self._ae_class = AE
        self._counter = 0

    def _ae(self) -> Any:
        ae = getattr(self._local, "ae", None)
        if ae is None:
            ae = self._ae_class(ae_title="BENCHCART")
            for sop, ts in self._contexts:
                ae.add_requested_context(sop, ts)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
            self._local.ae = ae
        return ae

    def _one(self, index: int, scheduled: float) -> Sent:
        from pydicom.uid import generate_uid

        ds = copy.deepcopy(self.datasets[index % len(self.datasets)])  # threads share the corpus
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        start = time.time()
        status = -1
        assoc = self._ae().associate("127.0.0.1", self.port, ae_title=self.called_ae)
        if assoc.is_established:
            answer = assoc.send_c_store(ds)
            status = int(answer.Status) if answer else -1
            end = time.time()
            assoc.release()
        else:
            end = time.time()
        return Sent(str(ds.SOPInstanceUID), scheduled, start, end, status)

    def open_loop(self, rate: float, n: int) -> list[Sent]:
        """``n`` stores started at ``rate`` per second (open loop: a slow server does not
        slow the arrivals), each on its own association."""
        t0 = time.time() + 0.05
        futures = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(self._pool.submit(self._one, self._next(), at))
        return [f.result() for f in futures]

    def closed_loop(self, n: int, concurrency: int) -> list[Sent]:
        """``n`` stores as fast as they are answered, ``concurrency`` at a time."""
        sem = threading.Semaphore(concurrency)

        def run(index: int) -> Sent:
            try:
                return self._one(index, time.time())
            finally:
                sem.release()

        futures = []
        for _ in range(n):
            sem.acquire()
            futures.append(self._pool.submit(run, self._next()))
        return [f.result() for f in futures]

    def stream(self, n: int, associations: int) -> list[Sent]:
        """``n`` stores over ``associations`` concurrent associations, many stores each."""
        from pydicom.uid import generate_uid

        def run(share: int) -> list[Sent]:
            out = []
            mine = [copy.deepcopy(d) for d in self.datasets[:8]]  # this thread's own copies
            assoc = self._ae().associate("127.0.0.1", self.port, ae_title=self.called_ae)
            try:
                for i in range(share):
                    ds = mine[i % len(mine)]
                    ds.SOPInstanceUID = generate_uid()
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    start = time.time()
                    answer = assoc.send_c_store(ds) if assoc.is_established else None
                    status = int(answer.Status) if answer else -1
                    out.append(Sent(str(ds.SOPInstanceUID), start, start, time.time(), status))
            finally:
                if assoc.is_established:
                    assoc.release()
            return out

        shares = [n // associations + (1 if i < n % associations else 0) for i in range(associations)]
        futures = [self._pool.submit(run, share) for share in shares if share]
        return [s for f in futures for s in f.result()]

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def close(self) -> None:
        self._pool.shutdown(wait=True)
