"""Queue semantics on real SQLite and real PostgreSQL."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from ecg_gateway.store.ingest import InboundMessage, Ingestor, IngestOutcome
from ecg_gateway.store.models import Event, Job, Message
from ecg_gateway.store.queue import claim, complete, requeue, retry_later


def _msg(key: str, raw: bytes = b"x") -> InboundMessage:
    return InboundMessage(source="dicom", idempotency_key=key, raw=raw, content_type="application/dicom",
                          peer="CART1", ecg_uid=key, identifiers={"patient_id": "P1"})


def test_t6_ingest_stores_message_and_job_once(sessions) -> None:
    ingestor = Ingestor(sessions)
    outcomes = [ingestor.accept(_msg("1.2.3")).outcome for _ in range(3)]
    assert outcomes == [IngestOutcome.STORED, IngestOutcome.DUPLICATE, IngestOutcome.DUPLICATE]
    assert ingestor.accept(_msg("1.2.3", raw=b"other")).outcome is IngestOutcome.CONFLICT
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 1
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        kinds = sorted(s.scalars(select(Event.kind)).all())
    assert kinds == ["received", "received_conflict", "received_duplicate", "received_duplicate"]


def test_t2_claim_priority_lease_expiry_and_dead(sessions) -> None:
    ingestor = Ingestor(sessions, max_attempts=2)
    for i in range(3):
        ingestor.accept(_msg(f"1.2.{i}"))
    with sessions.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == 3).values(priority=1))
    with sessions.begin() as s:
        first = claim(s, Job, limit=2, lease_s=0.3)
    assert sorted(c.id for c in first) == [1, 3]
    with sessions.begin() as s:
        assert claim(s, Job, limit=5, lease_s=0.3)[0].id == 2
    with sessions.begin() as s:
        assert complete(s, Job, 2)
        assert claim(s, Job, limit=5, lease_s=0.3) == []
    time.sleep(0.5)  # leases of jobs 1 and 3 expire: crash recovery
    with sessions.begin() as s:
        again = claim(s, Job, limit=5, lease_s=0.3)
    assert sorted((c.id, c.attempts) for c in again) == [(1, 2), (3, 2)]
    with sessions.begin() as s:
        assert retry_later(s, Job, 1, "boom", delay_s=0) == "dead"
    time.sleep(0.5)
    with sessions.begin() as s:
        assert claim(s, Job, limit=5, lease_s=0.3) == []  # job 3 expired on its last attempt
        states = dict(s.execute(select(Job.id, Job.state)).all())
    assert states == {1: "dead", 2: "done", 3: "dead"}
    with sessions.begin() as s:
        assert requeue(s, Job, [3]) == 1
        assert [c.id for c in claim(s, Job, limit=5, lease_s=5)] == [3]


def test_t2_a_crashed_batch_is_reclaimed_one_row_at_a_time(sessions) -> None:
    """A crash costs the whole batch one attempt; the re-run isolates the rows, so a row that
    crashes the process again uses up only its own attempts."""
    ingestor = Ingestor(sessions, max_attempts=3)
    for i in range(5):
        ingestor.accept(_msg(f"1.5.{i}"))
    with sessions.begin() as s:
        assert len(claim(s, Job, limit=4, lease_s=0.3, isolate_expired=True)) == 4  # then the process dies
    time.sleep(0.5)
    reclaimed = []
    for _ in range(4):
        with sessions.begin() as s:
            (one,) = claim(s, Job, limit=4, lease_s=30, isolate_expired=True)
            reclaimed.append((one.id, one.attempts))
    assert reclaimed == [(1, 2), (2, 2), (3, 2), (4, 2)]
    with sessions.begin() as s:  # no expired row left: back to full batches of fresh work
        assert [(c.id, c.attempts) for c in claim(s, Job, limit=4, lease_s=30, isolate_expired=True)] == [(5, 1)]


def test_concurrent_claimers_on_postgres_claim_each_job_exactly_once(pg_url: str) -> None:
    """Four claimers with their own connections drain 200 jobs; no job is claimed twice."""
    import threading

    from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head

    upgrade_to_head(pg_url)
    engine = make_engine(pg_url, pool_size=8)
    sessions = make_session_factory(engine)
    ingestor = Ingestor(sessions)
    for i in range(200):
        ingestor.accept(_msg(f"1.9.{i}"))
    seen: list[int] = []
    lock = threading.Lock()

    def claimer() -> None:
        while True:
            with sessions.begin() as s:
                batch = claim(s, Job, limit=5, lease_s=60)
                for c in batch:
                    assert complete(s, Job, c.id)
            if not batch:
                return
            with lock:
                seen.extend(c.id for c in batch)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    assert len(seen) == 200 and len(set(seen)) == 200
