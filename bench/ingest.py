"""Durable DICOM C-STORE throughput of ``ecg-gateway serve`` against dcmtk's storescp.

Both servers receive the same 12-lead ECG object (unique SOP Instance UID per store) from
the same pynetdicom SCU processes, in two modes: one association per ECG (as carts do) and
many stores in one association; with 1 and 4 concurrent senders. Our server commits every
ECG to SQLite (WAL, synchronous=FULL) before answering 0x0000; storescp writes a file
without fsync. The anchor ratio is ours / dcmtk, one association per ECG, 4 senders.

Loopback delayed ACK: our SCP sets TCP_NODELAY; pynetdicom's SCU does not. The run is
repeated with TCP_NODELAY forced on the SCU sockets (column "scu nodelay") to show the
~40 ms Nagle/delayed-ACK stalls that hit every implementation otherwise.

    python bench/ingest.py            # full run (~2-3 min)
    python bench/ingest.py --smoke    # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import free_port, machine_facts, summary_ms, table  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "dicom-ecg" / "pydicom_waveform_ecg.dcm"


def _sample_dataset():  # type: ignore[no-untyped-def]
    import pydicom

    if SAMPLE.exists():
        return pydicom.dcmread(SAMPLE)
    sys.path.insert(0, str(REPO))
    from tests.dicom_builders import ecg_dataset

    return ecg_dataset()


def _sender(port: int, n: int, per_assoc: bool, nodelay: bool, out: mp.Queue, go: mp.Event) -> None:  # type: ignore[type-arg]
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom import transport

    if nodelay:
        original = transport.AssociationSocket.connect

        def connect(self, address):  # type: ignore[no-untyped-def]
            original(self, address)
            if self.socket is not None:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.AssociationSocket.connect = connect  # type: ignore[method-assign]

    ds = _sample_dataset()
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    latencies: list[float] = []
    failures = 0
    out.put("ready")
    go.wait()
    assoc = None if per_assoc else ae.associate("127.0.0.1", port, ae_title="ANY")
    for _ in range(n):
        ds.SOPInstanceUID = generate_uid()
        start = time.perf_counter()
        if per_assoc:
            assoc = ae.associate("127.0.0.1", port, ae_title="ANY")
        status = assoc.send_c_store(ds) if assoc and assoc.is_established else None
        if per_assoc and assoc:
            assoc.release()
        latencies.append(time.perf_counter() - start)
        failures += 0 if status is not None and status.Status == 0 else 1
    if assoc and not per_assoc:
        assoc.release()
    out.put((latencies, failures))


def measure(port: int, total: int, senders: int, per_assoc: bool, nodelay: bool) -> dict[str, float]:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    go = ctx.Event()
    procs = [ctx.Process(target=_sender, args=(port, total // senders, per_assoc, nodelay, out, go))
             for _ in range(senders)]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get(timeout=120) == "ready"
    start = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    latencies = [x for lat, _ in results for x in lat]
    p50, p99 = summary_ms(latencies)
    return {"rate": len(latencies) / wall, "p50": p50, "p99": p99,
            "failures": float(sum(f for _, f in results))}


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    config = workdir / "gw.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{workdir / 'gw.db'}'}}\n"
        f"dicom: {{port: {port}, max_associations: 32}}\nhl7: {{enabled: false}}\nhttp: {{enabled: false}}\n"
        "logging: {level: WARNING, json_output: true}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ecg_gateway", "serve", "--role", "ingest", "--config",
                             str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def start_storescp(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = _dcmtk_storescp()
    if exe is None:
        return None
    port = free_port()
    out = workdir / "dcmtk"
    out.mkdir()
    proc = subprocess.Popen([exe, "--output-directory", str(out), "--aetitle", "ANY", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def _dcmtk_storescp() -> str | None:
    """dcmtk's storescp (pynetdicom installs a Python app of the same name: skip it)."""
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        exe = shutil.which("storescp", path=directory)
        if exe:
            version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in version.lower():
                return exe
    return None


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few stores per case, seconds")
    parser.add_argument("--stores", type=int, default=200, help="stores per case")
    args = parser.parse_args(argv)
    total = 8 if args.smoke else args.stores
    cases = [(True, 4, False), (True, 4, True)] if args.smoke else [
        (per_assoc, senders, nodelay) for nodelay in (False, True) for per_assoc in (True, False)
        for senders in (1, 4)]
    print(f"# DICOM ingest benchmark — {machine_facts()}\n")
    rows = []
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        gateway, gw_port = start_gateway(workdir)
        dcmtk = start_storescp(workdir)
        try:
            for per_assoc, senders, nodelay in cases:
                ours = measure(gw_port, total, senders, per_assoc, nodelay)
                anchor = measure(dcmtk[1], total, senders, per_assoc, nodelay) if dcmtk else None
                mode = "assoc per ECG" if per_assoc else "one assoc"
                ratio = ours["rate"] / anchor["rate"] if anchor else float("nan")
                ratios[(per_assoc, senders, nodelay)] = ratio
                rows.append([mode, senders, "on" if nodelay else "off", ours["rate"], ours["p50"], ours["p99"],
                             int(ours["failures"]), anchor["rate"] if anchor else "n/a",
                             anchor["p50"] if anchor else "n/a", anchor["p99"] if anchor else "n/a", ratio])
        finally:
            gateway.terminate()
            gateway.wait(30)
            if dcmtk:
                dcmtk[0].terminate()
                dcmtk[0].wait(30)
    print(table(["mode", "senders", "scu nodelay", "ours/s", "p50 ms", "p99 ms", "fail", "dcmtk/s",
                 "dcmtk p50", "dcmtk p99", "ours/dcmtk"], rows))
    key = (True, 4, True) if (True, 4, True) in ratios else next(iter(ratios))
    print(f"\nanchor: one association per ECG, 4 senders, SCU nodelay on: ours/dcmtk = {ratios[key]:.2f} "
          f"(goal >= 0.80; ours commits each ECG to SQLite with synchronous=FULL, dcmtk does not fsync)")
    failed = sum(int(r[6]) for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
