"""Durable DICOM C-STORE throughput of ``ecg-gateway serve`` against two storescp anchors.

Three servers receive the same 12-lead ECG object (unique SOP Instance UID per store) from
the same pynetdicom SCU processes: ours (``serve --role ingest``: decode, validate, commit
raw bytes + job to SQLite with WAL and synchronous=FULL, then 0x0000), dcmtk's ``storescp``
(C++, writes a file, no fsync) and pynetdicom's bundled ``storescp`` app (Python, writes a
file). Modes: one association per ECG (as carts do) and all stores in one association; with
1 and 4 concurrent senders; each case repeated, servers interleaved, so every ratio pairs
runs made under the same machine load. Goal: ours >= 0.8x dcmtk.

The SCU sets TCP_NODELAY (our SCP does too): with pynetdicom's default (Nagle on, ``--nagle``)
every implementation waits ~40 ms per round trip on loopback delayed ACKs.

    python bench/ingest.py [--stores 120] [--repeats 3] [--json OUT]   # ~2 min
    python bench/ingest.py --smoke                                     # seconds
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    figure,
    fmt_stat,
    free_port,
    load_average,
    machine_facts,
    md_table,
    stat,
    summary_ms,
    table,
    wait_port,
    write_report,
)

SAMPLE = REPO.parent / "shared" / "data" / "dicom-ecg" / "pydicom_waveform_ecg.dcm"


def _sample_dataset():  # type: ignore[no-untyped-def]
    import pydicom

    if SAMPLE.exists():
        return pydicom.dcmread(SAMPLE)
    sys.path.insert(0, str(REPO))
    from tests.support.dicom_builders import ecg_dataset

    return ecg_dataset()


def _sender(port: int, n: int, per_assoc: bool, nodelay: bool, out: mp.Queue, go: mp.Event) -> None:  # type: ignore[type-arg]
    from pydicom.uid import generate_uid
    from pynetdicom import AE, transport

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


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
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
    wait_port(port)
    return proc, port


def start_dcmtk(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = _dcmtk_storescp()
    if exe is None:
        return None
    port = free_port()
    out = workdir / "dcmtk"
    out.mkdir()
    proc = subprocess.Popen([exe, "--output-directory", str(out), "--aetitle", "ANY", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_pynetdicom(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """pynetdicom's bundled storescp app (Python, one thread per association, writes files)."""
    port = free_port()
    out = workdir / "pynetdicom"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", "--output-directory", str(out),
                             "--ae-title", "ANY", "--quiet", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
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


CASE_NAMES = {True: "one association per ECG", False: "all stores in one association"}
SERVERS = ("ours", "dcmtk", "pynetdicom")


def run_cases(ports: dict[str, int], cases: list[tuple[bool, int]], total: int, repeats: int,
              nodelay: bool) -> dict[tuple[bool, int, str], list[dict[str, float]]]:
    """Every case on every server, ``repeats`` rounds, servers interleaved within a round."""
    results: dict[tuple[bool, int, str], list[dict[str, float]]] = {}
    for _ in range(repeats):
        for per_assoc, senders in cases:
            for server, port in ports.items():
                m = measure(port, total, senders, per_assoc, nodelay)
                results.setdefault((per_assoc, senders, server), []).append(m)
    return results


def build_figures(results: dict[tuple[bool, int, str], list[dict[str, float]]],
                  cases: list[tuple[bool, int]], servers: list[str]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    figures, rows = [], []
    for per_assoc, senders in cases:
        ours = results[(per_assoc, senders, "ours")]
        mode = CASE_NAMES[per_assoc]
        key = f"{'assoc' if per_assoc else 'stream'}.{senders}"
        for metric, unit, better in (("rate", "C-STORE/s", True), ("p50", "ms", False), ("p99", "ms", False)):
            for anchor in servers[1:]:
                theirs = results[(per_assoc, senders, anchor)]
                goal = met = measured = None
                if metric == "rate" and anchor == "dcmtk":
                    goal = ">= 0.8x dcmtk"
                    measured = statistics.median([o["rate"] / a["rate"] for o, a in zip(ours, theirs, strict=True)])
                    met = measured >= 0.8
                what = "durable C-STORE/s" if metric == "rate" else f"C-STORE {metric} latency"
                figures.append(figure(
                    f"dicom.{key}.{metric}.vs_{anchor}", f"{what}, {mode}, {senders} sender(s)", unit,
                    [o[metric] for o in ours], anchor=[a[metric] for a in theirs],
                    anchor_name=f"{anchor} storescp", higher_is_better=better, goal=goal, goal_met=met,
                    goal_value=0.8 if goal else None, goal_measured=measured,
                    command="python bench/ingest.py"))
        row: list[Any] = [mode, senders]
        for server in servers:
            runs = results[(per_assoc, senders, server)]
            row += [fmt_stat(stat([r["rate"] for r in runs])), fmt_stat(stat([r["p50"] for r in runs])),
                    fmt_stat(stat([r["p99"] for r in runs]))]
        failures = sum(int(r["failures"]) for s in servers for r in results[(per_assoc, senders, s)])
        rows.append(row + [failures])
    return figures, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few stores per case, seconds")
    parser.add_argument("--stores", type=int, default=60, help="stores per case and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nagle", action="store_true",
                        help="leave Nagle on in the SCU (pynetdicom's default): ~40 ms stalls for everyone")
    parser.add_argument("--json", type=Path, help="write figures here (for bench/run_all)")
    args = parser.parse_args(argv)
    total = 8 if args.smoke else args.stores
    repeats = 1 if args.smoke else args.repeats
    cases = [(True, 4), (False, 1)] if args.smoke else [(True, 1), (True, 4), (False, 1), (False, 4)]
    print(f"# DICOM ingest benchmark — {machine_facts()}, load avg {load_average()[0]:.2f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}
        try:
            procs["ours"], ports["ours"] = start_gateway(workdir)
            dcmtk = start_dcmtk(workdir)
            if dcmtk:
                procs["dcmtk"], ports["dcmtk"] = dcmtk
            procs["pynetdicom"], ports["pynetdicom"] = start_pynetdicom(workdir)
            results = run_cases(ports, cases, total, repeats, nodelay=not args.nagle)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
    servers = list(ports)
    figures, rows = build_figures(results, cases, servers)
    headers = ["mode", "senders"] + [f"{s} {m}" for s in servers for m in ("C-STORE/s", "p50 ms", "p99 ms")] + ["fail"]
    print(table(headers, rows))
    print(f"\n(median (min–max) over {repeats} repeat(s) of {total} stores; SCU TCP_NODELAY "
          f"{'off' if args.nagle else 'on'})")
    for fig in figures:
        if fig["id"].endswith("rate.vs_dcmtk") or fig["id"].endswith("rate.vs_pynetdicom"):
            print(f"{fig['name']}: ours/{fig['anchor']['name']} = {fmt_stat(fig['ratio'])}"
                  + (f"  (goal {fig['goal']['text']}: {'met' if fig['goal']['met'] else 'MISSED'})"
                     if "goal" in fig else ""))
    print("ours commits each ECG to SQLite (WAL, synchronous=FULL) before 0x0000; the anchors write a file "
          "without fsync")
    write_report(args.json, "ingest", figures, smoke=args.smoke, tables={"DICOM ingest": md_table(headers, rows)},
                 notes=[f"median (min–max) over {repeats} repeats of {total} stores per case; "
                        "ours commits to SQLite with synchronous=FULL, dcmtk and pynetdicom write files "
                        "without fsync"])
    failed = sum(int(r[-1]) for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
