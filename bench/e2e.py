"""End to end through ``ecg-gateway serve``: C-STORE start -> ORU ACK received, and where the
time goes.

The daemon runs as in production (``--role all``, SQLite WAL + synchronous=FULL, the shipped
model on CPU in fp32, JSON logs at INFO to a file) with a real MLLP EHR in another process.
``outbound.categories`` lists every category, so every ECG produces an ORU (the shipped
model calls most ECGs acute anyway: its acute threshold is 0.0007). Inputs are real 10 s
12-lead recordings at 500 Hz (CinC 2021 samples) sent as DICOM, one association per ECG,
from a pynetdicom client (TCP_NODELAY on, as a cart would be).

Per configuration (PDF attached to the ORU on / off):
* latency at 1 and 5 ECG/s, open loop (arrivals do not wait for the server), in windows;
* capacity: a burst of ECGs, 4 carts at once; sustainable rate = ECGs / (first C-STORE
  start -> last ORU ACK): what the whole pipeline drains per second on this CPU. Anchor
  (issue #28): dcmtk's ``storescp`` storing the same ECGs from the same 4 carts, one burst
  right after each of ours, so the ratio pairs runs made under the same load;
* latency at 90 % of that rate (the highest sustainable rate we report).

Stage breakdown per ECG, p50 / p99 of each, from the daemon's log lines (the worker is
serial, the sender is serial): receive (C-STORE start -> the store is ready to commit:
association, transfer, decode), commit (``ecg_ingested.commit_ms``: the write lock and the
fsync'd commit), claim wait (-> the worker's batch claim), inference (claim, decode, gate,
model: -> first ``ecg_triaged``; ``batch_committed.infer_ms`` is the model's part), result
commit (-> ``batch_committed``), sender wait (-> the sender is free), render
(``outbound_delivered.render_ms``), send (the rest of the sender's work: claim, decode,
compose, store the payload, write -> the EHR has the frame), EHR ACK (-> the ACK is read
and the delivery committed). The "slowest 5 %" row gives each stage's mean over the
ECGs in the phase's slowest 5 %: where the tail comes from.

    python bench/e2e.py [--variants pdf,nopdf,split,split-nopdf] [--windows 3] [--json OUT]
    python bench/e2e.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    figure,
    fmt_num,
    machine_facts,
    md_table,
    percentile,
    write_report,
)
from tests.support.carts import Sent, StoreClient, corpus  # noqa: E402
from tests.support.ehr_peer import EhrProcess  # noqa: E402
from tests.support.gateway import ALL_CATEGORIES, BENCH_DEFAULTS, Serve, write_config  # noqa: E402
from tests.support.logtail import LogTail, cpu_seconds, log_time, rss_mb  # noqa: E402

STAGES = ("receive", "commit", "claim_wait", "inference", "result_commit", "sender_wait", "render", "send",
          "ehr_ack")
GOAL_P99_5 = 150.0  # ms, acute C-STORE -> ORU ACK at 5 ECG/s (issue #28; aim 100)
GOAL_RATIO = 1.0  # end to end with the PDF / dcmtk storescp only storing the same ECGs (aim 2.0)


@dataclass
class Phase:
    name: str
    rate: float | None  # None: closed loop burst
    sent: list[Sent] = field(default_factory=list)
    windows: list[list[Sent]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process role
    wall_s: float = 0.0


# --- timeline -------------------------------------------------------------------------------

def timeline(records: list[dict[str, Any]], ehr: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per ECG uid: the stage durations (s) and category, from log records + EHR arrivals."""
    ingested: dict[str, float] = {}
    commit_s: dict[str, float] = {}
    triaged: dict[str, dict[str, Any]] = {}
    delivered: list[tuple[float, int, str, dict[str, Any]]] = []
    pending: list[dict[str, Any]] = []
    for r in records:
        event = r.get("event")
        if event == "ecg_ingested" and r.get("outcome") == "stored":
            ingested[r["ecg_uid"]] = log_time(r)
            commit_s[r["ecg_uid"]] = r.get("commit_ms", 0.0) / 1000
        elif event == "ecg_triaged":
            pending.append(r)
        elif event == "batch_committed" and pending:
            t_commit = log_time(r)
            t_first = min(log_time(p) for p in pending)
            for p in pending:
                triaged[p["ecg_uid"]] = {"t_first": t_first, "t_commit": t_commit, "category": p["category"],
                                         "latency_s": r["latency_ms"] / 1000, "outbound_id": p["outbound_id"],
                                         "batch": len(pending)}
            pending = []
        elif event == "outbound_delivered":
            delivered.append((log_time(r), r["outbound_id"], r["control_id"], r))
    by_outbound = {t["outbound_id"]: uid for uid, t in triaged.items() if t["outbound_id"] is not None}
    out: dict[str, dict[str, float]] = {}
    previous_done = 0.0
    for t_del, outbound_id, control_id, line in sorted(delivered, key=lambda d: d[:3]):
        uid = by_outbound.get(outbound_id)
        if uid is None or uid not in ingested or control_id not in ehr:
            previous_done = t_del
            continue
        tri = triaged[uid]
        t_claim = tri["t_first"] - tri["latency_s"]
        sender_start = max(tri["t_commit"], previous_done)
        out[uid] = {"t_ing": ingested[uid], "commit_s": commit_s[uid], "t_claim": t_claim,
                    "t_first": tri["t_first"], "t_commit": tri["t_commit"], "t_sender": sender_start,
                    "t_recv": ehr[control_id], "t_del": t_del, "category": tri["category"],
                    "batch": tri["batch"], "render_s": line.get("render_ms", 0.0) / 1000}
        previous_done = t_del
    return out


def per_ecg(sent: list[Sent], tl: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in sent:
        t = tl.get(s.uid)
        if t is None or s.status != 0:
            continue
        rows.append({
            "category": t["category"], "batch": t["batch"],
            "receive": t["t_ing"] - t["commit_s"] - s.start, "commit": t["commit_s"],
            "claim_wait": t["t_claim"] - t["t_ing"], "inference": t["t_first"] - t["t_claim"],
            "result_commit": t["t_commit"] - t["t_first"], "sender_wait": t["t_sender"] - t["t_commit"],
            "render": t["render_s"], "send": t["t_recv"] - t["t_sender"] - t["render_s"],
            "ehr_ack": t["t_del"] - t["t_recv"], "total": t["t_del"] - s.start,
            "store_rtt": s.end - s.start,
        })
    return rows


# --- running --------------------------------------------------------------------------------

def drain(tail: LogTail, delivered: int, timeout: float) -> bool:
    return tail.wait_count("outbound_delivered", delivered, timeout)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    pdf: bool
    layout: str = "all"  # all: one `serve --role all`; split: ingest, worker, sender processes


VARIANTS = {
    "pdf": Variant("pdf", "PDF on", True),
    "nopdf": Variant("nopdf", "PDF off", False),
    "split": Variant("split", "PDF on, worker and sender in their own processes", True, "split"),
    "split-nopdf": Variant("split-nopdf", "PDF off, worker and sender in their own processes", False, "split"),
}


class Daemon:
    """One ``serve --role all``, or one process per role on the same SQLite file."""

    def __init__(self, variant: Variant, workdir: Path, ehr_port: int) -> None:
        db = workdir / f"{variant.key}.db"
        self.db_glob = f"{variant.key}.db*"
        # one process: nudges wake the worker and the sender; split: they poll the database, and
        # the worker keeps the 1 inference thread `--role all` uses here, so only the process
        # boundary differs
        split = variant.layout == "split"
        config = write_config(workdir / f"{variant.key}.yaml", f"sqlite:///{db}", BENCH_DEFAULTS,
                              outbound={"host": "127.0.0.1", "port": ehr_port, "categories": ALL_CATEGORIES,
                                        "attach_pdf": variant.pdf},
                              worker={"poll_interval_s": 0.02} if split else {},
                              model={"cpu_threads": 1} if split else {})
        roles = ["all"] if variant.layout == "all" else ["worker", "sender", "ingest"]
        self.procs = {role: Serve(config, workdir / f"{variant.key}-{role}.log", "--role", role) for role in roles}
        self.tails = {role: LogTail(p.log_path) for role, p in self.procs.items()}
        self.delivery = self.tails["all" if variant.layout == "all" else "sender"]

    def start(self) -> int:
        for role, proc in self.procs.items():
            proc.started(model=role in ("all", "worker"))
        return self.procs["all" if "all" in self.procs else "ingest"].ports["dicom"]

    def records(self) -> list[dict[str, Any]]:
        for tail in self.tails.values():
            tail.poll()
        return [r for tail in self.tails.values() for r in tail.records]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for proc in self.procs.values():
            for k, v in proc.metrics().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(p.pid) for role, p in self.procs.items()}

    def memory(self) -> dict[str, float]:
        each = [rss_mb(p.pid) for p in self.procs.values()]
        return {k: sum(m[k] for m in each) for k in ("rss_mb", "peak_mb")}

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


def run_variant(variant: Variant, datasets: list[Any], workdir: Path, plan: dict[str, Any],
                log: Any, anchor: StoreClient | None = None) -> dict[str, Any]:
    """``anchor``: a client of dcmtk's storescp, given the same burst after each of ours."""
    ehr = EhrProcess()
    daemon = Daemon(variant, workdir, ehr.port)
    client = None
    anchor_rates: list[float] = []
    try:
        client = StoreClient(daemon.start(), datasets)
        total = 0
        warm = client.closed_loop(plan["warmup"], 2)
        total += sum(s.status == 0 for s in warm)
        drain(daemon.delivery, total, 60)
        phases: list[Phase] = []
        for pname, rate, n, windows in plan["phases"]:
            if rate == "sustainable":
                caps = capacity(phases[-1], timeline(daemon.records(), ehr.received()))
                rate = max(1.0, round(0.9 * statistics.median(caps), 1))
                n = n or max(5, int(rate * plan["sustain_s"]))
            phase = Phase(pname, rate)
            m0, c0 = daemon.metrics(), daemon.cpu()
            started = time.time()
            for _ in range(windows):
                window = (client.open_loop(rate, n) if rate is not None
                          else client.closed_loop(n, plan["burst_concurrency"]))
                total += sum(s.status == 0 for s in window)
                if not drain(daemon.delivery, total, plan["drain_s"]):
                    log(f"  {variant.key}/{pname}: not all ORUs delivered within {plan['drain_s']} s")
                    total = daemon.delivery.counts.get("outbound_delivered", 0)
                phase.windows.append(window)
                phase.sent.extend(window)
                if rate is None and anchor is not None:
                    anchor_rates.append(store_rate(anchor.closed_loop(n, plan["burst_concurrency"])))
            phase.wall_s = time.time() - started
            m1, c1 = daemon.metrics(), daemon.cpu()
            phase.metrics = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
            phase.cpu = {role: c1[role] - c0[role] for role in c1}
            phases.append(phase)
            log(f"  {variant.key}/{pname}: {len(phase.sent)} ECGs at {rate or 'max'}/s done")
        memory = daemon.memory()
        ehr_seen = ehr.received()
    finally:
        if client is not None:
            client.close()
        daemon.stop()
        ehr.close()
    tl = timeline(daemon.records(), ehr_seen)
    return {"variant": variant, "phases": phases, "timeline": tl, "memory": memory, "anchor": anchor_rates,
            "db_bytes": sum(p.stat().st_size for p in workdir.glob(daemon.db_glob)), "ecgs": total}


def store_rate(sent: list[Sent]) -> float:
    """Stores answered with success per second, first C-STORE start -> last answer."""
    ok = [s for s in sent if s.status == 0]
    if len(ok) < len(sent) or not ok:
        return float("nan")
    return len(ok) / (max(s.end for s in ok) - min(s.start for s in ok))


def start_storescp(workdir: Path, datasets: list[Any]) -> tuple[Any, StoreClient] | None:
    """dcmtk's storescp (writes each ECG to a file) and a client for it; None without dcmtk."""
    from bench.ingest import start_dcmtk

    started = start_dcmtk(workdir)
    if started is None:
        return None
    proc, port = started
    return proc, StoreClient(port, datasets, called_ae="ANY")


def capacity(phase: Phase, tl: dict[str, dict[str, Any]]) -> list[float]:
    """Per burst window: ECGs / (first C-STORE start -> last ORU delivered)."""
    rates = []
    for window in phase.windows:
        ends = [tl[s.uid]["t_del"] for s in window if s.uid in tl]
        if len(ends) == len(window) and window:
            rates.append(len(window) / (max(ends) - min(s.start for s in window)))
        else:
            rates.append(float("nan"))
    return rates


# --- reporting ------------------------------------------------------------------------------

def window_pcts(phase: Phase, tl: dict[str, Any], q: float, acute_only: bool) -> list[float]:
    values = []
    for window in phase.windows:
        rows = per_ecg(window, tl)
        totals = [r["total"] for r in rows if not acute_only or r["category"] == "acute"]
        values.append(percentile(totals, q) * 1000 if totals else float("nan"))
    return values


def stage_table(result: dict[str, Any]) -> tuple[str, list[list[Any]]]:
    """Per phase: p50 / p99 of every stage (ms), then a row with each stage's mean over the
    phase's slowest 5 % of ECGs (what the tail is made of)."""
    rows = []
    for phase in result["phases"]:
        ecgs = per_ecg(phase.sent, result["timeline"])
        if not ecgs:
            continue
        row: list[Any] = [phase.name, f"{phase.rate:g}/s" if phase.rate else "burst", len(ecgs)]
        for stage in (*STAGES, "total"):
            values = [e[stage] * 1000 for e in ecgs]
            row.append(f"{percentile(values, 50):.1f} / {percentile(values, 99):.0f}")
        m = phase.metrics
        batches = m.get("ecg_gateway_inference_seconds_count", 0.0)
        row.append(f"{m.get('ecg_gateway_inference_batch_size_sum', 0) / batches:.1f}" if batches else "-")
        n = len(phase.sent)
        row.append(" + ".join(f"{role} {1000 * c / n:.0f}" for role, c in phase.cpu.items()) if n else "-")
        rows.append(row)
        cut = percentile([e["total"] for e in ecgs], 95)
        slow = [e for e in ecgs if e["total"] >= cut]
        rows.append(["", "slowest 5 %", len(slow), *[f"{statistics.mean(e[st] for e in slow) * 1000:.1f}"
                                                    for st in (*STAGES, "total")], "", ""])
    headers = ["phase", "rate", "ECGs", *[s.replace("_", " ") for s in STAGES], "total", "batch",
               "daemon CPU ms/ECG"]
    return md_table(headers, rows), rows


def build_figures(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    figures: list[dict[str, Any]] = []
    tables: dict[str, str] = {}
    notes: list[str] = []
    for res in results:
        tl, cfg, key = res["timeline"], res["variant"].label, res["variant"].key
        for phase in res["phases"]:
            if phase.name == "capacity":
                figures.append(sustainable_figure(key, cfg, capacity(phase, tl), res["anchor"]))
                continue
            label = f"{phase.rate:g}/s" if phase.rate else "max"
            for q in (50, 99):
                values = window_pcts(phase, tl, q, acute_only=True)
                goal = goal_met = None
                if phase.name == "r5" and q == 99:
                    goal = f"<= {GOAL_P99_5:g} ms (aim <= 100 ms)"
                    goal_met = statistics.median(values) <= GOAL_P99_5 if values else None
                figures.append(figure(
                    f"e2e.{key}.{phase.name}.p{q}",
                    f"end to end, acute ECG, C-STORE start -> ORU ACK, p{q} at {label} ({cfg})", "ms", values,
                    higher_is_better=False, goal=goal, goal_met=goal_met,
                    goal_value=GOAL_P99_5 if goal else None, anchor=[GOAL_P99_5] * len(values) if goal else None,
                    anchor_name="goal (issue #28)" if goal else None, command="python bench/e2e.py"))
        text, _ = stage_table(res)
        tables[f"stages ({cfg})"] = text
        n = res["ecgs"]
        figures.append(figure(f"e2e.{key}.db_bytes_per_ecg", f"database bytes per ECG ({cfg}, SQLite, ORU stored)",
                              "bytes", [res["db_bytes"] / n] if n else [], higher_is_better=False,
                              command="python bench/e2e.py"))
        notes.append(f"{cfg}: serve RSS at the end {res['memory']['rss_mb']:.0f} MB "
                     f"(peak {res['memory']['peak_mb']:.0f} MB) after {n} ECGs")
    return figures, tables, notes


def sustainable_figure(key: str, cfg: str, rates: list[float], anchor: list[float]) -> dict[str, Any]:
    """Our sustainable rate against dcmtk storescp storing the same ECGs, burst by burst."""
    name = f"end to end: sustainable ECG/s (500 Hz DICOM in, ORU out, {cfg})"
    if not anchor:  # dcmtk is not installed: the figure stands alone
        return figure(f"e2e.{key}.sustainable", name, "ECG/s", rates, command="python bench/e2e.py",
                      note="no dcmtk storescp: no anchor")
    ratios = [o / a for o, a in zip(rates, anchor, strict=False) if a == a and o == o]
    measured = statistics.median(ratios) if ratios else float("nan")
    return figure(f"e2e.{key}.sustainable", name, "ECG/s", rates, anchor=anchor,
                  anchor_name="dcmtk storescp storing the same ECGs, same 4 carts",
                  goal=f">= {GOAL_RATIO:g}x dcmtk storescp (aim 2x)", goal_met=measured >= GOAL_RATIO,
                  goal_value=GOAL_RATIO, goal_measured=measured, command="python bench/e2e.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few ECGs per phase (seconds)")
    parser.add_argument("--variants", default="pdf,nopdf,split,split-nopdf",
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--windows", type=int, default=3, help="repeats (windows) per phase")
    parser.add_argument("--burst", type=int, default=150, help="ECGs per capacity burst")
    parser.add_argument("--json", type=Path, help="write figures here (for bench/run_all)")
    args = parser.parse_args(argv)
    w = 1 if args.smoke else args.windows
    if args.smoke:
        args.variants = "pdf"  # one daemon start keeps the smoke run short
    plan = {"warmup": 2 if args.smoke else 10, "burst_concurrency": 4, "drain_s": 30 if args.smoke else 120,
            "sustain_s": 10.0,
            "phases": [("r1", 1.0, 2 if args.smoke else 10, w), ("r5", 5.0, 4 if args.smoke else 40, w),
                       ("capacity", None, 6 if args.smoke else args.burst, 1 if args.smoke else 2),
                       ("sustainable", "sustainable", 4 if args.smoke else 0, w)]}
    datasets, what = corpus(8 if args.smoke else 124)
    print(f"# end to end — {machine_facts()}\n# input: {what}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        storescp = start_storescp(Path(tmp), datasets)
        if storescp is None:
            print("# dcmtk storescp not found: the sustainable rate gets no anchor (apt-get install dcmtk)")
        anchor = storescp[1] if storescp is not None else None
        try:
            for key in [k.strip() for k in args.variants.split(",") if k.strip()]:
                results.append(run_variant(VARIANTS[key], datasets, Path(tmp), plan, print, anchor))
        finally:
            if storescp is not None:
                storescp[1].close()
                storescp[0].terminate()
                storescp[0].wait(30)
    figures, tables, notes = build_figures(results)
    for title, text in tables.items():
        print(f"\n## stages, p50 / p99 ms — {title}\n{text}")
    print()
    for fig in figures:
        goal = fig.get("goal")
        print(f"{fig['name']}: {fmt_num(fig['ours']['median'])} {fig['unit']} "
              f"(min {fmt_num(fig['ours']['min'])}, max {fmt_num(fig['ours']['max'])})"
              + (f"  goal {goal['text']}: {'met' if goal['met'] else 'MISSED'}" if goal else ""))
    for note in notes:
        print(note)
    write_report(args.json, "e2e", figures, smoke=args.smoke, tables=tables, notes=notes,
                 input=what)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
