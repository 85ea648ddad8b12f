"""HL7 MLLP ingest: our receiver (decode + durable SQLite commit + ACK) vs a python-hl7 server.

Both servers run in their own process and get the same native-waveform ORU^R01 messages
(built from real recordings: ~3 KB = 0.4 s of PTB-XL record 00001, ~150 KB = the 8
independent leads of CinC record HR06009, 10 s at 500 Hz), each with a unique MSH-10, from
asyncio clients that send one message and wait for its ACK, over 1 and 4 connections.

* ours: ``Hl7Receiver`` + ``serve_mllp``: validates, decodes the whole ECG, commits raw
  bytes + job to a real SQLite file (WAL, synchronous=FULL), then sends AA; JSON logs at
  INFO go to /dev/null as in production.
* anchor: python-hl7 0.4.5 ``start_hl7_server`` whose handler does ``readmessage()``
  (``hl7.parse``) and ``create_ack()`` only: no validation, no decoding, no storage.

Goals (issue #3): 150 KB rate >= 1x python-hl7's despite our commit; ACK p99 < 50 ms.
Also prints the in-process time to decode the 150 KB message to an Ecg (goal < 20 ms).

    python bench/mllp.py            # full run (~1-2 min)
    python bench/mllp.py --smoke    # a few seconds
    python bench/mllp.py --save-messages DIR   # write the two messages (for another host)
    python bench/mllp.py --messages DIR        # run with messages saved earlier
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import write_report  # noqa: E402

SHARED = Path(os.environ.get("ECG_SHARED_DATA", REPO.parent / "shared" / "data"))
ID_WIDTH = 16  # fixed-width control ids keep every copy of a message the same size


# --- messages ------------------------------------------------------------------------------

def build_messages() -> dict[str, bytes]:
    """The two test messages, with a placeholder MSH-10 of ID_WIDTH characters."""
    from tests.support.hl7_builders import cinc_record, ptbxl_record, waveform_oru

    placeholder = "X" * ID_WIDTH
    ptbxl = SHARED / "ptbxl" / "records100" / "00000" / "00001_lr"
    cinc = SHARED / "cinc2021-samples" / "twelve_leads_test_sample" / "HR06009"
    if ptbxl.with_suffix(".hea").exists() and cinc.with_suffix(".hea").exists():
        small_sig, small_leads, small_fs = ptbxl_record(ptbxl)
        big_sig, big_leads, big_fs = cinc_record(cinc)
        keep = [big_leads.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
        big_sig, big_leads = big_sig[keep], tuple(big_leads[i] for i in keep)
    else:  # no shared data here: a synthetic stand-in of the same shape (said in the output)
        print("note: shared data not found, using synthetic waveforms", file=sys.stderr)
        leads = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
        t = np.arange(5000) / 500.0
        big_sig = np.round(800 * np.sin(2 * np.pi * 1.2 * t)[None, :] * np.arange(1, 9)[:, None] / 8)
        big_sig, big_leads, big_fs = big_sig.astype(np.int64), leads, 500.0
        small_sig, small_leads, small_fs = big_sig[:, ::5], leads, 100.0
    return {
        "3 KB": waveform_oru(small_sig[:, :75], small_leads, small_fs, control_id=placeholder),
        "150 KB": waveform_oru(big_sig[:, :4700], big_leads, big_fs, control_id=placeholder),
    }


def numbered(template: bytes, prefix: str, n: int) -> list[bytes]:
    placeholder = b"X" * ID_WIDTH
    return [template.replace(placeholder, f"{prefix}{i:0{ID_WIDTH - len(prefix)}d}".encode(), 1)
            for i in range(n)]


# --- servers (child processes) ------------------------------------------------------------------

def run_ours(db_path: str, port_queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from ecg_gateway.config import Hl7Config
    from ecg_gateway.inbound.hl7_receiver import Hl7Receiver, start_hl7_listener
    from ecg_gateway.logs import configure_logging
    from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
    from ecg_gateway.store.ingest import Ingestor

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - logs are produced, then discarded
    configure_logging("INFO", json_output=True)
    url = f"sqlite:///{db_path}"
    upgrade_to_head(url)
    receiver = Hl7Receiver(Ingestor(make_session_factory(make_engine(url))))

    async def main() -> None:
        server = await start_hl7_listener(receiver, Hl7Config(port=0, max_connections=64))
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def run_python_hl7(port_queue: mp.Queue) -> None:  # type: ignore[type-arg]
    import hl7.mllp

    async def handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await hl7.mllp.start_hl7_server(handler, "127.0.0.1", 0, limit=64 << 20)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


# --- client ---------------------------------------------------------------------------------------

async def drive(port: int, messages: list[bytes], connections: int) -> tuple[float, list[float]]:
    """Send ``messages`` over ``connections`` persistent connections; (elapsed s, latencies)."""
    from ecg_gateway.mllp import MllpClient

    latencies: list[float] = []
    shares = [messages[i::connections] for i in range(connections)]

    async def one(share: list[bytes]) -> None:
        async with MllpClient("127.0.0.1", port, connect_timeout_s=5, ack_timeout_s=60) as client:
            for payload in share:
                t0 = time.perf_counter()
                ack = await client.send(payload)
                latencies.append(time.perf_counter() - t0)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError(f"unexpected ACK: {ack[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(one(s) for s in shares))
    return time.perf_counter() - start, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def decode_time_ms(message: bytes, repeats: int) -> float:
    from ecg_gateway.inbound.hl7 import decode_hl7

    decode_hl7(message)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_hl7(message)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (seconds)")
    parser.add_argument("--save-messages", type=Path, help="write the test messages here and exit")
    parser.add_argument("--messages", type=Path, help="read the test messages from here")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are median (min-max)")
    parser.add_argument("--json", type=Path, help="write figures here (for bench/run_all)")
    args = parser.parse_args(argv)
    counts = {"3 KB": 20, "150 KB": 8} if args.smoke else {"3 KB": 200, "150 KB": 40}
    repeats = 1 if args.smoke else args.repeats
    if args.messages:
        templates = {size: (args.messages / f"{size.replace(' ', '')}.hl7").read_bytes()
                     for size in ("3 KB", "150 KB")}
    else:
        templates = build_messages()
    if args.save_messages:
        args.save_messages.mkdir(parents=True, exist_ok=True)
        for size, payload in templates.items():
            (args.save_messages / f"{size.replace(' ', '')}.hl7").write_bytes(payload)
        return 0
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        queue = ctx.Queue()
        procs = {
            "ours": ctx.Process(target=run_ours, args=(str(Path(tmp) / "bench.db"), queue), daemon=True),
            "python-hl7": ctx.Process(target=run_python_hl7, args=(queue,), daemon=True),
        }
        ports = {}
        for name, proc in procs.items():
            proc.start()
            ports[name] = queue.get(timeout=60)
        try:
            run = 0
            for _ in range(repeats):
                for size, template in templates.items():
                    for connections in (1, 4):
                        for name in ("python-hl7", "ours"):
                            run += 1
                            msgs = numbered(template, f"R{run}-", counts[size])
                            asyncio.run(drive(ports[name], msgs[:3], 1))  # warm-up (stored too)
                            elapsed, lat = asyncio.run(drive(ports[name], msgs[3:], connections))
                            rows.append((name, size, len(template), connections, len(lat),
                                         len(lat) / elapsed, pct(lat, 50), pct(lat, 99)))
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.join(5)
    decode_ms = decode_time_ms(templates["150 KB"], 5 if args.smoke else 30)
    print_report(_medians(rows), decode_ms, args.smoke)
    figures, md = build_figures(rows, decode_ms)
    write_report(args.json, "mllp", figures, smoke=args.smoke, tables={"HL7 MLLP ingest": md},
                 notes=[f"median (min–max) over {repeats} rounds; ours decodes and commits every message to "
                        "SQLite (synchronous=FULL) before AA, python-hl7 only parses and ACKs"])
    return 0


def _medians(rows: list[tuple]) -> list[tuple]:  # type: ignore[type-arg]
    """One row per (server, size, connections): the median over rounds of each number."""
    groups: dict[tuple, list[tuple]] = {}  # type: ignore[type-arg]
    for r in rows:
        groups.setdefault((r[0], r[1], r[2], r[3]), []).append(r)
    return [(*key, sum(r[4] for r in g), statistics.median(r[5] for r in g), statistics.median(r[6] for r in g),
             statistics.median(r[7] for r in g)) for key, g in groups.items()]


def build_figures(rows: list[tuple], decode_ms: float) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    from bench._common import figure, fmt_stat, md_table, stat

    def series(name: str, size: str, conns: int, col: int) -> list[float]:
        return [r[col] for r in rows if (r[0], r[1], r[3]) == (name, size, conns)]

    figures, table_rows = [], []
    for size in ("3 KB", "150 KB"):
        for conns in (1, 4):
            for col, metric, unit, better in ((5, "rate", "msg/s", True), (6, "p50", "ms", False),
                                              (7, "p99", "ms", False)):
                ours, anchor = series("ours", size, conns, col), series("python-hl7", size, conns, col)
                goal = met = value = measured = None
                if metric == "rate" and size == "150 KB":
                    measured = statistics.median([o / a for o, a in zip(ours, anchor, strict=True)])
                    goal, met, value = ">= 1x python-hl7", measured >= 1.0, 1.0
                if metric == "p99":
                    goal, met, value = "< 50 ms", statistics.median(ours) < 50, 50.0
                what = "HL7 messages/s (durable)" if metric == "rate" else f"HL7 ACK {metric} latency"
                figures.append(figure(f"hl7.{size.replace(' ', '').lower()}.{conns}.{metric}",
                                      f"{what}, {size} message, {conns} connection(s)", unit, ours,
                                      anchor=anchor, anchor_name="python-hl7 parse+ACK server",
                                      higher_is_better=better, goal=goal, goal_met=met, goal_value=value,
                                      goal_measured=measured, command="python bench/mllp.py"))
            table_rows.append([size, conns] + [fmt_stat(stat(series(n, size, conns, c)))
                                               for n in ("ours", "python-hl7") for c in (5, 6, 7)])
    figures.append(figure("hl7.decode150", "decode a 150 KB HL7 ORU to an Ecg (in process)", "ms", [decode_ms],
                          higher_is_better=False, goal="< 20 ms", goal_met=decode_ms < 20, goal_value=20.0,
                          command="python bench/mllp.py"))
    md = md_table(["message", "conns", "ours msg/s", "ours p50 ms", "ours p99 ms", "python-hl7 msg/s",
                   "python-hl7 p50 ms", "python-hl7 p99 ms"], table_rows)
    return figures, md


def print_report(rows: list[tuple], decode_ms: float, smoke: bool) -> None:  # type: ignore[type-arg]
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench/mllp.py{' --smoke' if smoke else ''}: {os.cpu_count()} cores, {cpu}, "
          f"Python {platform.python_version()}, load avg {load:.2f}")
    header = ("server", "message", "bytes", "conns", "msgs", "msg/s", "p50 ms", "p99 ms")
    cells = [header] + [(r[0], r[1], str(r[2]), str(r[3]), str(r[4]), f"{r[5]:.1f}",
                         f"{r[6]:.1f}", f"{r[7]:.1f}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for i, c in enumerate(cells):
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    rate = {(r[0], r[1], r[3]): r[5] for r in rows}
    print()
    for conns in (1, 4):
        ratio = rate[("ours", "150 KB", conns)] / rate[("python-hl7", "150 KB", conns)]
        print(f"150 KB, {conns} conn: ours / python-hl7 rate = {ratio:.2f}x (goal >= 1x, "
              f"ours commits every message, python-hl7 only parses)")
    worst = max(r[7] for r in rows if r[0] == "ours")
    print(f"ours ACK p99, worst case above = {worst:.1f} ms (goal < 50 ms)")
    print(f"decode 150 KB ORU -> Ecg (in-process median) = {decode_ms:.1f} ms (goal < 20 ms)")


if __name__ == "__main__":
    raise SystemExit(main())
