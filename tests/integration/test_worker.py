"""The triage worker on real SQLite and PostgreSQL, with a real (tiny) checkpoint."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch
from sqlalchemy import func, select

from ecg_gateway.config import Config, ModelConfig, OutboundConfig, WorkerConfig
from ecg_gateway.ecg import UNINTERPRETABLE, Ecg, unpack_tracing
from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.ingest import InboundMessage, Ingestor
from ecg_gateway.store.models import Event, Job, Outbound, Result
from ecg_gateway.triage.model import TriageModel, load_model
from ecg_gateway.triage.service import Triager
from ecg_gateway.worker import Worker
from tests.support import synthetic
from tests.support.synthetic import NPZ, decode_npz, encode_npz, write_tiny_checkpoint
from tests.support.worker_proc import drain


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    write_tiny_checkpoint(path)
    return path


def make_config(model_path: Path, batch_size: int = 8, poll: float = 0.05) -> Config:
    return Config(model=ModelConfig(path=str(model_path), device="cpu", batch_size=batch_size),
                  worker=WorkerConfig(poll_interval_s=poll, lease_s=30, max_attempts=2),
                  outbound=OutboundConfig(host="127.0.0.1", port=2576,
                                          categories=["acute", UNINTERPRETABLE]))


def enqueue(ingestor: Ingestor, ecgs, prefix: str = "1.2.826.0.1") -> None:  # type: ignore[no-untyped-def]
    for i, ecg in enumerate(ecgs):
        ingestor.accept(InboundMessage(source="dicom", idempotency_key=f"{prefix}.{i}", raw=encode_npz(ecg),
                                       content_type=NPZ, peer="CART1", ecg_uid=f"{prefix}.{i}",
                                       identifiers={}))


def count(sessions, table, *where) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where))


def test_result_keeps_what_the_sender_needs_so_it_never_decodes(sessions, checkpoint: Path) -> None:
    """Issue #31: the acquisition time always, the waveform when its ORU gets a PDF."""
    when = datetime(2024, 5, 6, 7, 8, 9)  # as a cart gives it: wall clock, no zone

    def decode(content_type: str, raw: bytes) -> Ecg:
        return replace(decode_npz(content_type, raw), acquired_at=when)

    ecgs = [synthetic.synthetic_ecg(0), synthetic.flat_line(1)]
    enqueue(Ingestor(sessions), ecgs)
    config = make_config(checkpoint)
    config = config.model_copy(update={"outbound": config.outbound.model_copy(update={"attach_pdf": True})})
    assert Worker(sessions, config, decode).run_once() == 2
    with sessions() as s:
        results = {r.message_id: r for r in s.scalars(select(Result))}
        with_oru = set(s.scalars(select(Result.message_id).join(Outbound, Outbound.result_id == Result.id)))
    assert results[1].acquired_at == results[2].acquired_at == "2024-05-06T07:08:09"
    assert 2 in with_oru and results[2].category == UNINTERPRETABLE  # flat line: an ORU with the trace
    for message_id, result in results.items():
        if message_id in with_oru:
            tracing = unpack_tracing(result.tracing)
            assert np.array_equal(tracing.signal, decode_npz(NPZ, encode_npz(ecgs[message_id - 1])).signal)
        else:
            assert result.tracing is None


def test_batch_is_triaged_and_committed(sessions, checkpoint: Path) -> None:
    good = [synthetic.synthetic_ecg(i) for i in range(5)]
    bad = [synthetic.flat_line(5), synthetic.lead_off(6), synthetic.clipped(7)]
    enqueue(Ingestor(sessions), good + bad)
    worker = Worker(sessions, make_config(checkpoint), decode_npz)
    assert worker.run_once() == 8
    assert worker.healthy and worker.health_detail["model_id"] == "tiny-test"

    with sessions() as s:
        results = {r.job_id: r for r in s.scalars(select(Result))}
        jobs = {j.id: j for j in s.scalars(select(Job))}
        outbound = list(s.scalars(select(Outbound).order_by(Outbound.id)))
        events = s.scalars(select(Event.kind).where(Event.kind == "triaged")).all()
    assert sorted(results) == sorted(jobs) and all(j.state == "done" for j in jobs.values())
    assert len(events) == 8
    with sessions() as s:
        loaded = s.scalars(select(Event.detail).where(Event.kind == "model_loaded")).all()
    assert [(d["model_id"], d["placeholder"]) for d in loaded] == [("tiny-test", False)]
    assert all(r.quality["model_placeholder"] is False for r in results.values())
    by_msg = {r.message_id: r for r in results.values()}
    expected_reasons = {6: ["flat_line"], 7: ["lead_off:V2"], 8: ["clipping:II"]}
    for msg_id, reasons in expected_reasons.items():
        r = by_msg[msg_id]
        assert r.category == UNINTERPRETABLE and r.quality["ok"] is False and r.quality["reasons"] == reasons
    ckpt_sha = load_model(checkpoint, "cpu").sha256
    direct = Triager(load_model(checkpoint, "cpu")).triage(good[2:3])[0]  # what `triage FILE` gives
    for msg_id in range(1, 6):
        r = by_msg[msg_id]
        assert r.quality["ok"] is True and r.category in {"normal", "abnormal_not_acute", "subacute", "acute"}
        assert r.p_normal + r.p_abnormal_not_acute + r.p_subacute + r.p_acute == pytest.approx(1, abs=1e-5)
        assert (r.model_id, r.model_sha256) == ("tiny-test", ckpt_sha) and r.latency_ms > 0
    assert by_msg[3].p_acute == pytest.approx(direct.probabilities["acute"], abs=1e-5)  # batch-independent
    wanted = {r.id for r in results.values() if r.category in ("acute", UNINTERPRETABLE)}
    assert {o.result_id for o in outbound} == wanted
    for o in outbound:
        category = next(r.category for r in results.values() if r.id == o.result_id)
        assert re.fullmatch(r"ECGGW[0-9A-HJKMNP-TV-Z]{15}", o.control_id)
        assert o.destination == "127.0.0.1:2576"
        assert o.priority == (0 if category == "acute" else 10) and o.max_attempts == 10


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_t8_unusable_checkpoint_degrades_then_recovers(sessions, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.pt"
    if damage == "corrupt":
        write_tiny_checkpoint(path)
        path.write_bytes(path.read_bytes()[:1000])
    enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(i) for i in range(3)])
    worker = Worker(sessions, make_config(path), decode_npz, model_retry_s=0.2)
    assert worker.run_once() == 0
    assert not worker.healthy
    detail = worker.health_detail
    assert detail["state"] == "degraded" and not detail["model_loaded"]
    assert ("not found" if damage == "missing" else "unreadable") in detail["model_error"]
    assert count(sessions, Result) == 0 and count(sessions, Job, Job.attempts > 0) == 0  # claimed nothing

    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert count(sessions, Result) == 0
        write_tiny_checkpoint(path)  # operator restores the file; the worker retries on its own
        deadline = time.monotonic() + 15
        while count(sessions, Result) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert count(sessions, Result) == 3 and worker.healthy


def test_t9_poison_message_goes_dead_after_max_attempts(sessions, checkpoint: Path) -> None:
    ingestor = Ingestor(sessions, max_attempts=2)
    ingestor.accept(InboundMessage(source="hl7", idempotency_key="FAC|1", raw=b"not an npz", content_type=NPZ,
                                   peer=None, ecg_uid=None, identifiers={}))
    enqueue(ingestor, [synthetic.synthetic_ecg(1)])
    worker = Worker(sessions, make_config(checkpoint), decode_npz, retry_delay_s=0.0)
    assert worker.run_once() == 2
    with sessions() as s:
        assert s.get(Job, 1).state == "queued" and "UndecodableError" in s.get(Job, 1).last_error
    time.sleep(0.05)
    assert worker.run_once() == 1
    with sessions() as s:
        assert s.get(Job, 1).state == "dead" and s.get(Job, 2).state == "done"
        assert s.scalars(select(Result.job_id)).all() == [2]
        assert len(s.scalars(select(Event).where(Event.kind == "triage_failed")).all()) == 2
    assert worker.run_once() == 0


class MemoryLimitedModel(TriageModel):
    """The real model, on a device that runs out of memory above ``limit`` ECGs per batch."""

    def __init__(self, model: TriageModel, limit: int) -> None:
        self.__dict__.update(model.__dict__)
        self.limit, self.calls = limit, []

    def predict_full(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError("simulated: batch too large for the device")
        return super().predict_full(batch)


def test_t9_out_of_memory_halves_the_batch(sessions, checkpoint: Path) -> None:
    ecgs = [synthetic.synthetic_ecg(i) for i in range(8)]
    enqueue(Ingestor(sessions), ecgs)
    limited = MemoryLimitedModel(load_model(checkpoint, "cpu"), limit=2)
    worker = Worker(sessions, make_config(checkpoint), decode_npz, load=lambda *_: limited)
    assert worker.run_once() == 8
    assert limited.calls[:3] == [8, 4, 2] and max(c for c in limited.calls if c <= 2) == 2
    want = Triager(load_model(checkpoint, "cpu")).triage(ecgs)
    with sessions() as s:
        got = {r.message_id: r.p_acute for r in s.scalars(select(Result))}
    assert got == pytest.approx({i + 1: w.probabilities["acute"] for i, w in enumerate(want)}, abs=1e-5)


def test_t8_model_that_always_fails_completes_nothing(sessions, checkpoint: Path) -> None:
    enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(i) for i in range(4)])
    broken = MemoryLimitedModel(load_model(checkpoint, "cpu"), limit=0)
    worker = Worker(sessions, make_config(checkpoint), decode_npz, load=lambda *_: broken,
                    model_retry_s=60, retry_delay_s=0.0)
    assert worker.run_once() == 4
    assert count(sessions, Result) == 0 and count(sessions, Job, Job.state == "done") == 0
    assert count(sessions, Job, Job.state == "queued") == 4
    assert not worker.healthy and "blank input" in worker.health_detail["model_error"]
    assert worker.run_once() == 0  # stopped claiming until the model reloads


class RecordingModel(TriageModel):
    """The real model; records the batch size of every forward pass, and can fail its warm-up."""

    def __init__(self, model: TriageModel, warm_up_error: Exception | None = None) -> None:
        self.__dict__.update(model.__dict__)
        self.sizes: list[int] = []
        self.warm_up_error = warm_up_error

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return super()._forward(x)

    def warm_up(self, max_batch: int) -> float:
        if self.warm_up_error is not None:
            raise self.warm_up_error
        return super().warm_up(max_batch)


def test_model_load_runs_every_batch_size_once_before_the_first_claim(sessions, checkpoint: Path) -> None:
    ecgs = [synthetic.synthetic_ecg(i) for i in range(3)]
    enqueue(Ingestor(sessions), ecgs)
    model = RecordingModel(load_model(checkpoint, "cpu"))
    worker = Worker(sessions, make_config(checkpoint, batch_size=6), decode_npz, load=lambda *_: model)
    with structlog.testing.capture_logs() as logs:
        assert worker.ensure_model()
    assert model.sizes == [6, 5, 4, 3, 2, 1]
    assert [e["warm_up_s"] > 0 for e in logs if e["event"] == "worker_model_ready"] == [True]
    assert worker.run_once() == 3 and model.sizes[6:] == [3]
    want = Triager(load_model(checkpoint, "cpu")).triage(ecgs)  # a model never warmed up
    with sessions() as s:
        got = {r.message_id: r.p_acute for r in s.scalars(select(Result))}
    assert got == pytest.approx({i + 1: w.probabilities["acute"] for i, w in enumerate(want)}, abs=1e-6)


def test_a_failed_warm_up_is_logged_and_the_worker_still_triages(sessions, checkpoint: Path) -> None:
    enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(i) for i in range(2)])
    model = RecordingModel(load_model(checkpoint, "cpu"), torch.OutOfMemoryError("simulated: warm-up batch"))
    worker = Worker(sessions, make_config(checkpoint), decode_npz, load=lambda *_: model)
    with structlog.testing.capture_logs() as logs:
        assert worker.ensure_model() and worker.healthy
    assert [(e["event"], e.get("error")) for e in logs if e["log_level"] == "warning"] == [
        ("model_warm_up_failed", "OutOfMemoryError")]
    assert worker.run_once() == 2 and count(sessions, Result) == 2


def test_t2_lost_lease_writes_no_result(sessions, checkpoint: Path) -> None:
    enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(i) for i in range(2)])
    worker = Worker(sessions, make_config(checkpoint), decode_npz)
    assert worker.ensure_model()
    items = worker._claim()
    with sessions.begin() as s:  # job 1's lease expires and another worker takes it over
        s.execute(Job.__table__.update().where(Job.id == 1).values(attempts=Job.attempts + 1))
    for item in items:
        worker._decode_one(item)
    worker._infer(items)
    worker._commit(items, latency_ms=1.0)
    with sessions() as s:
        assert s.scalars(select(Result.job_id)).all() == [2]
        assert s.get(Job, 1).state == "running"  # still the other worker's


def test_nudge_wakes_the_worker_before_the_poll_interval(sessions, checkpoint: Path) -> None:
    nudge = threading.Event()
    worker = Worker(sessions, make_config(checkpoint, poll=30.0), decode_npz, nudge=nudge)
    assert worker.ensure_model()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # worker is idle, waiting up to 30 s
        started = time.monotonic()
        enqueue(Ingestor(sessions, on_commit=nudge.set), [synthetic.synthetic_ecg(1)])
        while count(sessions, Result) == 0 and time.monotonic() - started < 10:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        nudge.set()
        thread.join(5)
    assert count(sessions, Result) == 1 and elapsed < 5
    assert not thread.is_alive()


@pytest.mark.postgres
def test_three_worker_processes_write_each_result_once(pg_url: str, tmp_path: Path) -> None:
    upgrade_to_head(pg_url)
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    checkpoint = tmp_path / "model.pt"
    write_tiny_checkpoint(checkpoint)
    ecgs = [synthetic.synthetic_ecg(i, fs=250.0) for i in range(20)]
    bad = [synthetic.flat_line(0)]
    ingestor = Ingestor(sessions)
    for i in range(300):
        ecg = bad[0] if i % 50 == 0 else ecgs[i % 20]
        ingestor.accept(InboundMessage(source="dicom", idempotency_key=f"2.25.{i}", raw=encode_npz(ecg),
                                       content_type=NPZ, peer=None, ecg_uid=f"2.25.{i}", identifiers={}))
    ctx = multiprocessing.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=drain, args=(pg_url, str(checkpoint), 8, out, go)) for _ in range(3)]
    for p in procs:
        p.start()
    assert [out.get(timeout=120) for _ in procs] == ["ready"] * 3
    go.set()  # all three claim from the same queue at once
    done = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    try:
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Result)) == 300
            assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == 300
            assert s.scalars(select(Job.state).distinct()).all() == ["done"]
            assert s.scalar(select(func.max(Job.attempts))) == 1  # nobody claimed a job twice
            assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "triaged")) == 300
            uninterpretable = s.scalar(select(func.count()).select_from(Result)
                                       .where(Result.category == UNINTERPRETABLE))
            assert uninterpretable == 6
            assert s.scalar(select(func.count()).select_from(Outbound)) == s.scalar(
                select(func.count()).select_from(Result).where(Result.category.in_(["acute", UNINTERPRETABLE])))
        assert sum(done) == 300 and all(n > 0 for n in done), done
    finally:
        engine.dispose()


def test_real_dicom_through_the_real_decoder_and_bundled_model(sessions) -> None:
    from ecg_gateway.inbound.decode import DICOM, decode_message
    from tests.support.paths import shared_data

    files = ["pydicom_waveform_ecg.dcm", "ecgtoolkit_Example.dcm", "dcm-waveform_test_ecg.dcm"]
    ingestor = Ingestor(sessions)
    for i, name in enumerate(files):
        raw = shared_data("dicom-ecg", name).read_bytes()
        ingestor.accept(InboundMessage(source="dicom", idempotency_key=f"dicom:{i}", raw=raw, content_type=DICOM,
                                       peer="CART1", ecg_uid=f"1.2.3.{i}", identifiers={}))
    config = Config(model=ModelConfig(device="cpu", batch_size=8))  # model.path unset: bundled default
    worker = Worker(sessions, config, decode_message)
    assert worker.run_once() == 3
    with sessions() as s:
        results = s.scalars(select(Result).order_by(Result.id)).all()
    assert len(results) == 3
    for r in results:
        assert r.quality["ok"] is True, r.quality["reasons"]
        assert r.category in {"normal", "abnormal_not_acute", "subacute", "acute"}
        assert r.model_id == worker.health_detail["model_id"]
        assert r.quality["model_placeholder"] is worker.health_detail["placeholder"]


def test_t5_database_outage_is_survived_and_reported(tmp_path: Path, checkpoint: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not-yet' / 'gateway.db'}"  # folder missing: every connect fails
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    worker = Worker(sessions, make_config(checkpoint, poll=0.01), decode_npz)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker.failures < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert thread.is_alive() and not worker.healthy
        assert worker.health_detail["last_error"] == "OperationalError"
        (tmp_path / "not-yet").mkdir()  # the database comes back
        upgrade_to_head(url)
        enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(1)])
        # healthy again once the batch that wrote the result has returned
        while (count(sessions, Result) == 0 or not worker.healthy) and time.monotonic() < deadline + 10:
            time.sleep(0.02)
        assert count(sessions, Result) == 1 and worker.healthy
    finally:
        stop.set()
        thread.join(5)
        engine.dispose()


def test_a_batch_whose_commit_lost_its_connection_is_released_at_once(pg_url: str, checkpoint: Path) -> None:
    """Issue #29 D4: PostgreSQL drops the worker's connection in the middle of its commit. The
    claimed jobs are given back at once (next attempt within seconds), not left ``running``
    until ``worker.lease_s`` (60 s here) ends."""
    from sqlalchemy import text

    upgrade_to_head(pg_url)
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    enqueue(Ingestor(sessions), [synthetic.synthetic_ecg(i) for i in range(4)])
    config = make_config(checkpoint, poll=0.05).model_copy(update={"worker": WorkerConfig(
        poll_interval_s=0.05, lease_s=60, max_attempts=3)})
    worker = Worker(sessions, config, decode_npz)
    assert worker.ensure_model()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    locker, watcher = engine.connect(), engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        locker.execute(text("LOCK TABLE results IN EXCLUSIVE MODE"))  # the commit will wait here
        thread.start()
        deadline = time.monotonic() + 30
        while not (waiting := watcher.execute(text(
                "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()):
            assert time.monotonic() < deadline, "the worker never reached its commit"
            time.sleep(0.05)
        watcher.execute(text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": waiting})
        locker.rollback()
        dropped = time.monotonic()
        while count(sessions, Job, Job.state == "done") < 4 and time.monotonic() < dropped + 15:
            time.sleep(0.05)
        redone_s = time.monotonic() - dropped
    finally:
        locker.close()
        watcher.close()
        stop.set()
        thread.join(10)
    with sessions() as s:
        jobs = s.execute(select(Job.state, Job.attempts)).all()
        failed = s.scalars(select(Event.detail).where(Event.kind == "triage_failed")).all()
    engine.dispose()
    assert sorted(jobs) == [("done", 2)] * 4, jobs  # one attempt lost to the drop, none to the lease
    assert redone_s < 15 and worker.processed == 4
    assert [d["error"] for d in failed] == ["batch failed: OperationalError"] * 4
