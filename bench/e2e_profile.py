"""Where the CPU goes on the end-to-end path: py-spy on ``serve`` at a fixed ECG rate.

Runs the same set-up as bench/e2e.py (``--role all``, SQLite, the shipped model, real 500 Hz
DICOM ECGs in, every ECG an ORU with its PDF, a real MLLP EHR), attaches ``py-spy record``
to the daemon for ``--seconds`` while ECGs arrive open loop at ``--rate``, and sorts the
samples (busy threads only, 100 Hz) into named costs by the frames on each stack, most
specific first (a decode inside the C-STORE handler counts as decode, not as pynetdicom).

    python bench/e2e_profile.py --rate 6 --seconds 20 [--pdf on|off] [--raw OUT.txt] [--json OUT]
    python bench/e2e_profile.py --smoke
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import figure, md_table, write_report  # noqa: E402
from tests.support.carts import StoreClient, corpus  # noqa: E402
from tests.support.ehr_peer import EhrProcess  # noqa: E402
from tests.support.gateway import ALL_CATEGORIES, BENCH_DEFAULTS, Serve, write_config  # noqa: E402
from tests.support.logtail import LogTail  # noqa: E402

#: (cost name, substrings of a frame), checked in order: the first rule any frame matches wins.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PDF render (reportlab, outbound/render.py)", ("outbound/render.py", "reportlab/")),
    ("model forward (torch, triage/model.py predict)", ("predict (ecg_gateway/triage/model.py",)),
    ("quality gate (triage/quality.py)", ("ecg_gateway/triage/quality.py",)),
    ("preprocess / resample (triage/preprocess.py)", ("ecg_gateway/triage/preprocess.py",)),
    ("DICOM decode + validate (inbound/dicom.py, pydicom)", ("ecg_gateway/inbound/dicom.py", "pydicom/")),
    ("ORU compose (outbound/oru.py)", ("ecg_gateway/outbound/oru.py",)),
    ("database (SQLAlchemy, sqlite3)", ("sqlalchemy/", "sqlite3", "alembic/")),
    ("logging (structlog, stdlib logging)", ("structlog/", "logging/__init__")),
    ("DICOM network (pynetdicom)", ("pynetdicom/",)),
    ("MLLP + asyncio event loop", ("ecg_gateway/mllp.py", "asyncio/")),
    ("metrics / ops (prometheus_client)", ("prometheus_client/",)),
)


def categorise(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """(samples per named cost, samples per leaf function, total samples) from py-spy raw output."""
    costs: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[_short(frames[-1])] += count
        for name, needles in RULES:
            if any(needle in frame for frame in frames for needle in needles):
                costs[name] += count
                break
        else:
            costs["other (threading, interpreter)"] += count
    return costs, leaves, total


def _short(frame: str) -> str:
    """``func (path/to/mod.py:123)`` -> ``func (mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def record(rate: float, seconds: float, pdf: bool, workdir: Path, log: Any,
           warmup: int = 8) -> tuple[str, dict[str, Any]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    datasets, _ = corpus(32)
    ehr = EhrProcess()
    config = write_config(workdir / "p.yaml", f"sqlite:///{workdir / 'p.db'}", BENCH_DEFAULTS,
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL_CATEGORIES,
                                    "attach_pdf": pdf})
    serve = Serve(config, workdir / "p.log")
    tail = LogTail(serve.log_path)
    raw_path = workdir / "profile.txt"
    try:
        serve.started()
        client = StoreClient(serve.ports["dicom"], datasets)
        client.closed_loop(warmup, 2)
        tail.wait_count("outbound_delivered", warmup, 60)
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(serve.pid), "--duration", str(int(seconds)),
                                     "--format", "raw", "--output", str(raw_path), "--nonblocking", "--rate", "100"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        sent = client.open_loop(rate, max(1, int(rate * (seconds - 1))))
        _, err = spy_proc.communicate(timeout=seconds + 60)
        ok = sum(s.status == 0 for s in sent)
        delivered = tail.wait_count("outbound_delivered", warmup + ok, 120)
        client.close()
    finally:
        serve.stop()
        ehr.close()
    if not raw_path.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err[-2000:]}")
    log(f"profiled {len(sent)} ECGs at {rate:g}/s for {seconds:g} s; all delivered: {delivered}")
    return raw_path.read_text(), {"rate": rate, "seconds": seconds, "ecgs": len(sent), "pdf": pdf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=6.0, help="ECG/s (use the sustainable rate)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pdf", default="on", choices=("on", "off"))
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw (collapsed stacks) output here")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rate, args.seconds = 2.0, 2.0
    with tempfile.TemporaryDirectory() as tmp:
        raw, info = record(args.rate, args.seconds, args.pdf == "on", Path(tmp), print,
                           warmup=2 if args.smoke else 8)
    if args.raw:
        args.raw.write_text(raw)
    costs, leaves, total = categorise(raw)
    rows = [[name, n, f"{100 * n / total:.1f}%"] for name, n in costs.most_common()]
    leaf_rows = [[name, n, f"{100 * n / total:.1f}%"] for name, n in leaves.most_common(12)]
    cost_table = md_table(["cost (busy-thread samples)", "samples", "share"], rows)
    leaf_table = md_table(["leaf function (self time)", "samples", "share"], leaf_rows)
    print(f"\n# py-spy on serve, {info['ecgs']} ECGs at {info['rate']:g}/s, PDF {args.pdf}, {total} samples\n")
    print(cost_table, "\n")
    print(leaf_table)
    top = [{"name": name, "samples": n, "share": n / total} for name, n in costs.most_common(3)] if total else []
    figures = [figure(f"profile.share.{i + 1}", f"profile: cost #{i + 1}: {t['name']}", "% of busy samples",
                      [100 * t["share"]], higher_is_better=False,
                      command=f"python bench/e2e_profile.py --rate {args.rate:g} --seconds {args.seconds:g}")
               for i, t in enumerate(top)]
    write_report(args.json, "profile", figures, smoke=args.smoke,
                 tables={"costs": cost_table, "leaf functions": leaf_table}, top=top, samples=total, **info)
    return 0 if total else 1


if __name__ == "__main__":
    raise SystemExit(main())
