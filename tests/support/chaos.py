"""Crash-safety chaos run (reliability.md T1 and S1): ECGs in while ``serve`` is SIGKILLed.

A DICOM cart and an HL7 sender push ECGs (real PTB-XL recordings, unique UIDs / MSH-10s)
and resend whatever was not acknowledged; the daemon is SIGKILLed at chosen moments — a
store in flight, a job leased by the worker, an ORU leased by the sender — and restarted
on the same ports; the EHR holds its ACKs and (S1) injects faults. After the drain the
database and the EHR's log are checked against the invariants of reliability.md §2:

* every acknowledged ECG is stored once, with the sha256 of the stored bytes, which are the
  bytes the cart sent (HL7) or end with the dataset it sent (DICOM);
* no non-terminal row (jobs queued/running, outbound pending/sending);
* every result in a delivered category has exactly one first ORU row, delivered or dead,
  and at most one correction (a PDF past its render budget comes in a corrected ORU,
  decisions.md 47); delivered rows were AA'd by the EHR, dead ones never were (never both,
  never neither); no ORU for the other categories;
* extra ORU copies after an AA <= sends interrupted by a kill; every copy of an ORU has the
  same bytes and MSH-10.

    python bench/chaos.py             # S1: 1000 ECGs, 100 kills, EHR faults (~15 min here)
    python bench/chaos.py --smoke     # 16 ECGs, 2 kills (~1 min)

bench/chaos.py is the command line above; tests/integration/test_crash.py runs the T1 size
(60 ECGs, 5 kills) with the same code, which is why it lives here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.chaos_peers import ChaosEhr, Ecg, Pacer, dicom_cart, hl7_cart
from tests.support.gateway import ALL_CATEGORIES, GatewayProcess, free_port, write_config
from tests.support.paths import SHARED_DATA
from tests.support.stats import percentile

PTBXL = SHARED_DATA / "ptbxl" / "records100" / "00000"
S1_FAULTS = {"AR": 0.05, "close": 0.02, "wrong": 0.01, "stall": 0.01}
PHASES = ("ingest", "inference", "send", "any")


@dataclass
class Spec:
    ecgs: int = 1000
    kills: int = 100
    rate_per_s: float = 5.0
    hl7_share: float = 0.5
    acute_share: float | None = 0.2  # None: any mix of recordings
    deliver_all: bool = False  # every category gets an ORU (more sends to interrupt)
    faults: dict[str, float] = field(default_factory=lambda: dict(S1_FAULTS))
    hold_s: float = 0.3  # the EHR holds each ACK up to this long
    stall_s: float = 10.0
    attach_pdf: bool = True
    uptime_s: tuple[float, float] = (0.5, 3.0)  # between a restart and the next kill
    recordings: int = 12
    seed: int = 7
    drain_timeout_s: float = 600.0
    phase_timeout_s: float = 3.0  # how long an aimed kill waits for its phase before firing anyway


# --- inputs -----------------------------------------------------------------------------------

def _recordings(spec: Spec) -> tuple[list[Any], list[Any]]:
    """(acute, other) PTB-XL recordings as (samples, leads, fs); split by the bundled model."""
    from tests.support.hl7_builders import ptbxl_record

    paths = sorted(PTBXL.glob("*.hea"))[: max(spec.recordings * 3, 12)]
    if not paths:
        raise SystemExit(f"no PTB-XL records under {PTBXL}")
    records = [ptbxl_record(p.with_suffix("")) for p in paths]
    if spec.acute_share is None:
        return [], records[: spec.recordings]
    import numpy as np

    from ecg_gateway.ecg import Ecg as Record
    from ecg_gateway.triage.model import load_model
    from ecg_gateway.triage.service import Triager

    outcomes = Triager(load_model(None, "cpu")).triage(
        [Record(signal=(s / 1000.0).astype(np.float32), fs=fs, leads=leads, source="hl7") for s, leads, fs in records])
    acute = [r for r, o in zip(records, outcomes, strict=True) if o.category == "acute"]
    other = [r for r, o in zip(records, outcomes, strict=True) if o.category != "acute"]
    half = spec.recordings // 2
    return acute[:half], other[: spec.recordings - min(half, len(acute))]


def build_ecgs(spec: Spec) -> list[Ecg]:
    import numpy as np
    from pydicom.uid import generate_uid
    from scipy.signal import resample_poly

    from tests.support.dicom_builders import ecg_dataset
    from tests.support.hl7_builders import waveform_oru

    rng = random.Random(spec.seed)
    acute, other = _recordings(spec)
    ecgs = []
    for i in range(spec.ecgs):
        pool = acute if acute and spec.acute_share is not None and rng.random() < spec.acute_share else other
        samples, leads, fs = pool[rng.randrange(len(pool))]
        patient = {"patient_id": f"CHAOS{i:05d}", "family": "CHAOS", "given": f"N{i}"}
        if rng.random() < spec.hl7_share:
            control_id = f"CHAOS{spec.seed}-{i:05d}"
            ecgs.append(Ecg(f"hl7:WARD1:{control_id}", "hl7",
                            payload=waveform_oru(samples, leads, fs, control_id=control_id, patient=patient)))
        else:
            mv = resample_poly(samples / 1000.0, 5, 1, axis=1).astype(np.float32)  # 100 -> 500 Hz
            ds = ecg_dataset(mv, fs=500.0, uid=generate_uid(), leads=tuple(leads))
            ds.PatientID = patient["patient_id"]
            ecgs.append(Ecg(f"dicom:{ds.SOPInstanceUID}", "dicom", dataset=ds))
    return ecgs


# --- the daemon --------------------------------------------------------------------------------

def write_chaos_config(workdir: Path, spec: Spec, ehr_port: int) -> tuple[Path, str, dict[str, int]]:
    db_url = f"sqlite:///{workdir / 'gw.db'}"
    ports = {"dicom": free_port(), "hl7": free_port()}
    categories = ALL_CATEGORIES if spec.deliver_all else ["acute", "uninterpretable"]
    config = write_config(
        workdir / "chaos.yaml", db_url, dicom={"port": ports["dicom"]}, hl7={"port": ports["hl7"]},
        http={"enabled": False}, worker={"lease_s": 2, "poll_interval_s": 0.2},
        outbound={"host": "127.0.0.1", "port": ehr_port, "categories": categories, "connect_timeout_s": 1,
                  "ack_timeout_s": 2, "backoff_initial_s": 0.2, "backoff_max_s": 2, "max_attempts": 10,
                  "lease_s": 4, "attach_pdf": spec.attach_pdf},
        )
    return config, db_url, ports


class Probe:
    """Read-only looks into the daemon's SQLite file (WAL lets us read while it writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchall()

    def running_jobs(self) -> int:
        return int(self.query("SELECT count(*) FROM jobs WHERE state='running'")[0][0])

    def sending(self) -> set[tuple[int, int]]:
        return {(r[0], r[1]) for r in self.query("SELECT id, attempts FROM outbound WHERE state='sending'")}

    def open_work(self) -> int:
        return int(self.query("SELECT (SELECT count(*) FROM jobs WHERE state IN ('queued','running')) + "
                              "(SELECT count(*) FROM outbound WHERE state IN ('pending','sending'))")[0][0])


@dataclass
class Kill:
    target: str
    hit: list[str]
    interrupted_sends: list[tuple[int, int]]
    running_jobs: int


def _await_phase(phase: str, pacer: Pacer, probe: Probe, seen: set[tuple[int, int]], timeout_s: float,
                 all_acked: Any) -> None:
    """Wait until ``phase`` is under way, or until it cannot come any more (nothing left to
    store, triage or send), or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if phase == "any" or (phase == "ingest" and pacer.in_flight) \
                or (phase == "inference" and probe.running_jobs()) \
                or (phase == "send" and probe.sending() - seen):
            return
        if all_acked() and (phase == "ingest" or not probe.open_work()):
            return
        time.sleep(0.01)


def run(spec: Spec, workdir: Path, log: Any = print) -> dict[str, Any]:
    """The whole run; returns the report (see :func:`failures`)."""
    started = time.monotonic()
    ecgs = build_ecgs(spec)
    ehr = ChaosEhr(spec.faults, spec.hold_s, spec.stall_s, spec.seed)
    config, db_url, ports = write_chaos_config(workdir, spec, ehr.port)
    probe = Probe(workdir / "gw.db")
    rng = random.Random(spec.seed + 1)
    daemon = GatewayProcess(config).wait_started(120)
    pacer, stop = Pacer(spec.rate_per_s), threading.Event()
    carts = [threading.Thread(target=dicom_cart, args=(ports["dicom"], [e for e in ecgs if e.protocol == "dicom"],
                                                       pacer, stop), daemon=True),
             threading.Thread(target=hl7_cart, args=(ports["hl7"], [e for e in ecgs if e.protocol == "hl7"],
                                                     pacer, stop), daemon=True)]
    for cart in carts:
        cart.start()
    kills: list[Kill] = []
    interrupted: set[tuple[int, int]] = set()
    try:
        for target in itertools.islice(itertools.cycle(PHASES), spec.kills):
            time.sleep(rng.uniform(*spec.uptime_s))
            if all(e.acked_at for e in ecgs) and probe.open_work() == 0:
                break  # nothing left to interrupt
            _await_phase(target, pacer, probe, interrupted, spec.phase_timeout_s,
                         lambda: all(e.acked_at for e in ecgs))
            in_flight = pacer.in_flight
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(10)
            sending, running = probe.sending() - interrupted, probe.running_jobs()
            interrupted |= sending
            hit = [name for name, yes in (("ingest", in_flight), ("inference", running), ("send", sending)) if yes]
            kills.append(Kill(target, hit, sorted(sending), running))
            log(f"kill {len(kills)}/{spec.kills}: target={target} hit={','.join(hit) or '-'} "
                f"acked={sum(1 for e in ecgs if e.acked_at)}/{len(ecgs)}")
            daemon = GatewayProcess(config).wait_started(120)
        for cart in carts:
            cart.join(spec.drain_timeout_s)
        deadline = time.monotonic() + spec.drain_timeout_s
        while probe.open_work() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(spec.hold_s + 0.5)  # an ACK in flight lands before we stop
    finally:
        stop.set()
        exit_code = daemon.stop(timeout=60)
        ehr.close()
    report = analyse(spec, ecgs, ehr, db_url, kills, interrupted)
    report.update(wall_s=round(time.monotonic() - started, 1), exit_code=exit_code)
    return report


# --- the invariants ----------------------------------------------------------------------------

def analyse(spec: Spec, ecgs: list[Ecg], ehr: ChaosEhr, db_url: str, kills: list[Kill],
            interrupted: set[tuple[int, int]]) -> dict[str, Any]:
    from pynetdicom.dsutils import encode
    from sqlalchemy import select

    from ecg_gateway.store.db import make_engine, make_session_factory
    from ecg_gateway.store.models import Job, Message, Outbound, OutboundKind, Result

    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        messages = {m.idempotency_key: m for m in s.scalars(select(Message))}
        jobs = Counter(s.scalars(select(Job.message_id)))
        job_states = Counter(s.scalars(select(Job.state)))
        results = {r.id: r for r in s.scalars(select(Result))}
        outbound = list(s.scalars(select(Outbound)))
        stored = {key: (m.sha256, hashlib.sha256(m.raw).hexdigest(), m.raw, m.id) for key, m in messages.items()}
    engine.dispose()
    acked = [e for e in ecgs if e.acked_at]
    lost = [e.key for e in acked if e.key not in stored]
    sha_bad = [k for k, (recorded, actual, _, _) in stored.items() if recorded != actual]
    content_bad = []
    for e in acked:
        if e.key not in stored:
            continue
        raw = stored[e.key][2]
        sent = e.payload if e.protocol == "hl7" else encode(e.dataset, False, True)
        if (raw != sent) if e.protocol == "hl7" else not raw.endswith(sent or b"\0"):
            content_bad.append(e.key)
    delivered_categories = set(ALL_CATEGORIES if spec.deliver_all else ["acute", "uninterpretable"])
    by_result, corrections = defaultdict(list), defaultdict(list)
    for row in outbound:
        (corrections if row.kind == OutboundKind.CORRECTION.value else by_result)[row.result_id].append(row)
    neither = [r.id for r in results.values() if r.category in delivered_categories and len(by_result[r.id]) != 1]
    stray_corrections = [rid for rid, rows in corrections.items() if len(rows) > 1 or not by_result[rid]]
    unexpected = [r.id for r in results.values() if r.category not in delivered_categories and by_result[r.id]]
    copies = defaultdict(list)
    for copy in ehr.copies:
        copies[copy.control_id].append(copy)
    aa_at_ehr = {c for c, cs in copies.items() if any(x.verdict == "AA" for x in cs)}
    states = Counter(row.state for row in outbound)
    both = [row.control_id for row in outbound if row.state == "dead" and row.control_id in aa_at_ehr]
    delivered_without_aa = [row.control_id for row in outbound if row.state == "delivered"
                            and row.control_id not in aa_at_ehr]
    crash_duplicates = sum(len(cs) - 1 - next(i for i, x in enumerate(cs) if x.verdict == "AA")
                           for c, cs in copies.items() if c in aa_at_ehr)
    known = {row.control_id for row in outbound}
    latencies = [e.acked_at - e.first_try for e in acked if e.first_try]
    return {
        "ecgs": len(ecgs), "acked": len(acked), "kills": len(kills),
        "kills_hit": dict(Counter(h for k in kills for h in k.hit)),
        "interrupted_sends": len(interrupted), "lost": len(lost), "lost_keys": lost[:10],
        "stored_messages": len(stored), "sha256_mismatch": len(sha_bad), "content_mismatch": len(content_bad),
        "messages_without_one_job": sum(1 for _, _, _, mid in stored.values() if jobs[mid] != 1),
        "jobs": dict(job_states), "results": dict(Counter(r.category for r in results.values())),
        "outbound": dict(states), "non_terminal": job_states["queued"] + job_states["running"]
        + states["pending"] + states["sending"],
        "neither": len(neither), "both": len(both), "delivered_without_aa": len(delivered_without_aa),
        "corrections": sum(len(rows) for rows in corrections.values()),
        "stray_corrections": len(stray_corrections),
        "unexpected_oru_rows": len(unexpected), "orus_on_wire": len(ehr.copies),
        "orus_unknown_on_wire": len(set(copies) - known),
        "duplicates_after_aa": crash_duplicates,
        "resends_after_faults": len(ehr.copies) - len(copies) - crash_duplicates,
        "copies_identical": all(len({x.sha256 for x in cs}) == 1 for cs in copies.values()),
        "ehr_verdicts": dict(Counter(c.verdict for c in ehr.copies)),
        "cart_resends": sum(e.attempts - 1 for e in ecgs),
        "ack_latency_p50_s": round(percentile(latencies, 50), 2) if latencies else None,
        "ack_latency_p99_s": round(percentile(latencies, 99), 2) if latencies else None,
    }


def failures(report: dict[str, Any]) -> list[str]:
    """The invariants that do not hold (empty = pass)."""
    checks = {
        "every ECG acknowledged": report["acked"] == report["ecgs"],
        "0 lost": report["lost"] == 0,
        "sha256 of stored bytes": report["sha256_mismatch"] == 0,
        "stored bytes are the sent bytes": report["content_mismatch"] == 0,
        "one job per message": report["messages_without_one_job"] == 0,
        "0 non-terminal rows": report["non_terminal"] == 0,
        "never neither": report["neither"] == 0,
        "at most one correction, after a first ORU": report["stray_corrections"] == 0,
        "never both": report["both"] == 0,
        "delivered only after AA": report["delivered_without_aa"] == 0,
        "no ORU for other categories": report["unexpected_oru_rows"] == 0,
        "no unknown ORU on the wire": report["orus_unknown_on_wire"] == 0,
        "duplicates <= interrupted sends": report["duplicates_after_aa"] <= report["interrupted_sends"],
        "copies identical (same MSH-10, same bytes)": report["copies_identical"],
    }
    return [name for name, ok in checks.items() if not ok]
