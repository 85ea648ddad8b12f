"""Clients that play the ECG carts and senders: one C-STORE or one MLLP exchange at a time
for tests, and :class:`StoreClient` with a :func:`corpus` of real recordings for bench.

pynetdicom sends real associations; MLLP goes over real sockets.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from ecg_gateway.mllp import MllpClient, MllpDecoder, frame
from tests.support.dicom_builders import TWELVE_LEAD
from tests.support.paths import SHARED_DATA

# --- one exchange at a time (tests) ----------------------------------------------------

def c_store(port: int, ds: Any) -> int:
    """One C-STORE on its own association; the DIMSE status."""
    ae = AE(ae_title="CART1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def c_store_timed(port: int, ds: Any, tls: tuple[ssl.SSLContext, str] | None = None) -> tuple[int | None, float]:
    """One 12-lead C-STORE, rejection allowed: (status or None, seconds taken)."""
    ae = AE(ae_title="CART1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(TWELVE_LEAD)
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="ECG_GATEWAY", tls_args=tls)
    status = None
    if assoc.is_established:
        rsp = assoc.send_c_store(ds)
        status = int(rsp.Status) if "Status" in rsp else None
        assoc.release()
    return status, time.perf_counter() - start


def associate(port: int, contexts: list[str], calling: str = "TESTSCU") -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30  # a loaded CI box can be slow; rejection is still immediate
    for uid in contexts:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="ECG_GATEWAY")


def store_file_bytes(port: int, path: Path, sop_class: str) -> int:
    """Send a file's dataset bytes as they are (pynetdicom's chunked mode: no decode/re-encode)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = associate(port, [sop_class])
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def msa_fields(ack: str) -> list[str]:
    """The MSA segment's fields (``[\"MSA\", code, control id, ...]``)."""
    segment = next(s for s in ack.split("\r") if s.startswith("MSA"))
    return segment.split("|")


def send_all(port: int, payloads: list[bytes]) -> list[str]:
    """Send each payload over one MLLP connection; the ACKs as text."""
    async def go() -> list[str]:
        async with MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=30) as client:
            return [(await client.send(p)).decode("utf-8", "replace") for p in payloads]
    return asyncio.run(go())


def connect_from(source_ip: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source_ip, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def hl7_exchange(port: int, payload: bytes, source_ip: str = "127.0.0.1",
                 timeout: float = 10) -> tuple[list[str], float]:
    """One framed message on a raw socket: ([MSA code, control id, ERR segment], seconds)."""
    start = time.perf_counter()
    with connect_from(source_ip, port) as sock:
        sock.settimeout(timeout)
        sock.sendall(frame(payload))
        decoder = MllpDecoder(1 << 20)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed without an ACK")
            acks = [a for a in decoder.feed(data) if isinstance(a, bytes)]
            if acks:
                segment = next(s for s in acks[0].decode().split("\r") if s.startswith("MSA"))
                err = next((s for s in acks[0].decode().split("\r") if s.startswith("ERR")), "")
                return [*segment.split("|")[1:3], err], time.perf_counter() - start


# --- a corpus and a many-association client (bench) ------------------------------------

def corpus(limit: int = 124, fs: float = 500.0, decimate: int = 1) -> tuple[list[Any], str]:
    """Real 10 s 12-lead recordings at 500 Hz as DICOM datasets (synthetic if no shared data);
    ``decimate`` keeps every n-th sample (a cheaper ECG, e.g. 250 Hz, for long runs)."""
    import numpy as np

    from tests.support.dicom_builders import LEADS, ecg_dataset, synthetic_signal_mv

    datasets = []
    heads = sorted((SHARED_DATA / "cinc2021-samples").glob("*/*.hea"))
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
