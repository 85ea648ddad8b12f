"""The queue: every state change of a ``jobs`` or ``outbound`` row, with its audit event.

Two leased tables share one life cycle (:class:`Phase`: waiting → leased → finished, or
dead) and this one module: the worker, the sender, the admin page and the CLI call the
transitions below and never write a row's state themselves (``tests/unit/test_queue_home.py``
keeps it so). Each transition records its event in the caller's transaction, so a row's
state and its audit trail cannot disagree. Why two tables and not one: docs/decisions.md,
"One queue module".

A claim is one ``UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING``
statement: on SQLite writers are serialized (BEGIN IMMEDIATE), so it is atomic; on
PostgreSQL SKIP LOCKED keeps concurrent claimers off each other's rows. Rows whose lease
expired (a crashed worker) are claimable again in the same statement, and rows that have
used up their attempts go to ``dead`` first. Leases use the database clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, exists, func, or_, select, true, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from ecg_gateway.audit import record_event
from ecg_gateway.errors import AdminError
from ecg_gateway.store.db import db_now, db_now_plus
from ecg_gateway.store.models import Job, JobState, Outbound, OutboundKind, OutboundState, Result

__all__ = [
    "JOBS", "OUTBOUND", "Claimed", "Phase", "Queue", "claim_jobs", "claim_outbound",
    "depths", "fail_job", "finish_job", "job_held", "keep_payload", "mark_delivered",
    "mark_dead", "note_pdf", "record_sent", "release_jobs", "requeue_jobs",
    "retry_outbound", "retry_outbound_later",
]


class Phase(enum.Enum):
    """The one life cycle of a queued row; each table names the phases in its own words."""

    WAITING = "waiting"
    LEASED = "leased"
    FINISHED = "finished"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Queue:
    """One leased table: which rows, what they point at, and its names for the phases."""

    name: str
    table: Any  # type[Job] | type[Outbound]
    ref: Any  # the column a claim hands back (jobs.message_id, outbound.result_id)
    states: dict[Phase, str]

    def __getitem__(self, phase: Phase) -> str:
        return self.states[phase]


JOBS = Queue("jobs", Job, Job.message_id, {
    Phase.WAITING: JobState.QUEUED.value, Phase.LEASED: JobState.RUNNING.value,
    Phase.FINISHED: JobState.DONE.value, Phase.DEAD: JobState.DEAD.value})
OUTBOUND = Queue("outbound", Outbound, Outbound.result_id, {
    Phase.WAITING: OutboundState.PENDING.value, Phase.LEASED: OutboundState.SENDING.value,
    Phase.FINISHED: OutboundState.DELIVERED.value, Phase.DEAD: OutboundState.DEAD.value})
_OF: dict[type, Queue] = {Job: JOBS, Outbound: OUTBOUND}


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    attempts: int
    max_attempts: int
    ref_id: int  # jobs.message_id or outbound.result_id


# --- generic transitions (private: the public ones below add the event) -------------------

def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _set(session: Session, q: Queue, *where: Any, **values: Any) -> int:
    """One UPDATE of ``q``'s rows; the number of rows it changed."""
    done = session.execute(update(q.table).where(*where).values(**values)
                           .execution_options(synchronize_session=False))
    return cast(CursorResult[Any], done).rowcount


def claim(session: Session, table: type, limit: int, lease_s: float, kind: str | None = None,
          isolate_expired: bool = False, ready: Any = None) -> list[Claimed]:
    """Lease up to ``limit`` due rows, highest priority (lowest number) first, oldest first.

    ``isolate_expired``: while rows with an expired lease exist (their process died holding
    them), claim one of those alone. A crash costs every row of the batch it interrupted one
    attempt; re-running that batch row by row means a row that crashes the process again
    uses up only its own attempts, not its batch-mates' (the chaos run lost 11 % of ECGs to
    dead jobs without this). ``ready``: one more condition a due row must meet (a correction
    ORU waits for the first one). Must run inside the caller's transaction; the caller commits.
    """
    q = _OF[table]
    t, dialect = q.table, _dialect(session)
    now = db_now(dialect)
    expired = and_(t.state == q[Phase.LEASED], t.lease_until < now)
    _set(session, q, expired, t.attempts >= t.max_attempts, state=q[Phase.DEAD], lease_until=None,
         last_error="lease expired on the last attempt")
    due = or_(and_(t.state == q[Phase.WAITING], t.run_after <= now), expired)
    of_kind = (Job.kind == kind) if kind is not None and t is Job else true()
    if ready is not None:
        of_kind = and_(of_kind, ready)
    if isolate_expired and session.execute(select(t.id).where(expired, of_kind).limit(1)).first():
        due, limit = expired, 1
    candidates = select(t.id).where(due, of_kind).order_by(t.priority, t.id).limit(limit)
    if dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        update(t)
        .where(t.id.in_(candidates.scalar_subquery()))
        .values(state=q[Phase.LEASED], lease_until=db_now_plus(dialect, lease_s), attempts=t.attempts + 1)
        .returning(t.id, t.attempts, t.max_attempts, q.ref)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    return sorted((Claimed(id=r[0], attempts=r[1], max_attempts=r[2], ref_id=r[3]) for r in rows),
                  key=lambda c: c.id)


def complete(session: Session, table: type, row_id: int, **values: Any) -> bool:
    """Mark a leased row finished; False if we no longer hold it (lease lost)."""
    q = _OF[table]
    return _set(session, q, q.table.id == row_id, q.table.state == q[Phase.LEASED],
                state=q[Phase.FINISHED], lease_until=None, **values) == 1


def retry_later(session: Session, table: type, row_id: int, error: str, delay_s: float) -> str:
    """Give a leased row back for a later attempt, or to ``dead`` if attempts are used up.

    Returns the new state.
    """
    q = _OF[table]
    row = session.execute(select(q.table.attempts, q.table.max_attempts).where(q.table.id == row_id)).one()
    state = q[Phase.DEAD] if row.attempts >= row.max_attempts else q[Phase.WAITING]
    _set(session, q, q.table.id == row_id, q.table.state == q[Phase.LEASED], state=state,
         lease_until=None, last_error=error[:2000], run_after=db_now_plus(_dialect(session), delay_s))
    return state


def release(session: Session, table: type, claims: list[Claimed], error: str) -> dict[int, str]:
    """Give back rows whose batch failed (issue #29 D4): due at once, not after the lease.

    The live claimer knows its batch failed (e.g. the database connection dropped at commit),
    so its rows need not wait out the lease; the attempt counts, so a row whose attempts are
    used up goes to ``dead`` as an expired lease would. Only rows still held on the claimed
    attempt are touched. Returns the new state of each released row.
    """
    q = _OF[table]
    now, states = db_now(_dialect(session)), {}
    for c in claims:
        state = q[Phase.DEAD] if c.attempts >= c.max_attempts else q[Phase.WAITING]
        if _set(session, q, q.table.id == c.id, q.table.state == q[Phase.LEASED],
                q.table.attempts == c.attempts,
                state=state, lease_until=None, last_error=error[:2000], run_after=now) == 1:
            states[c.id] = state
    return states


def dead_letter(session: Session, table: type, row_id: int, error: str) -> None:
    q = _OF[table]
    _set(session, q, q.table.id == row_id, state=q[Phase.DEAD], lease_until=None, last_error=error[:2000])


def requeue(session: Session, table: type, row_ids: list[int] | None = None) -> int:
    """Put dead rows (all, or the given ids) back with fresh attempts (no check, no event)."""
    q = _OF[table]
    where = [q.table.state == q[Phase.DEAD]]
    if row_ids is not None:
        where.append(q.table.id.in_(row_ids))
    return _set(session, q, *where, state=q[Phase.WAITING], attempts=0, lease_until=None,
                run_after=db_now(_dialect(session)))


def _require_state(s: Session, q: Queue, ids: list[int], allowed: tuple[Phase, ...], noun: str) -> None:
    """Raise AdminError, naming every offending id, unless each row is in an allowed phase."""
    names = [q[p] for p in allowed]
    found: dict[int, str] = dict(s.execute(select(q.table.id, q.table.state).where(q.table.id.in_(ids))).all())
    problems = [f"{noun} {i} not found" if i not in found
                else f"{noun} {i} is {found[i]}, not {' or '.join(names)}"
                for i in ids if found.get(i) not in names]
    if problems:
        raise AdminError("; ".join(problems))


# --- jobs ----------------------------------------------------------------------------------

def enqueue_triage(session: Session, message_id: int, priority: int, max_attempts: int) -> Job:
    """A new triage job for a stored message (ingest, an admin replay): waiting, no attempts.

    The caller records why it was made (``received``, ``admin_replay``) in the same
    transaction, with the job's id, which is assigned here."""
    job = Job(kind="triage", message_id=message_id, priority=priority, max_attempts=max_attempts)
    session.add(job)
    session.flush()
    return job


def claim_jobs(session: Session, limit: int, lease_s: float) -> list[Claimed]:
    """The worker's claim: triage jobs, a crashed batch's rows one at a time."""
    return claim(session, Job, limit, lease_s, kind="triage", isolate_expired=True)


def job_held(session: Session, job: Claimed) -> bool:
    """Our lease stands iff the row is still running on the attempt we claimed (row locked)."""
    row = session.execute(
        select(Job.state, Job.attempts).where(Job.id == job.id).with_for_update()
    ).one_or_none()
    return row is not None and row.state == JOBS[Phase.LEASED] and row.attempts == job.attempts


def finish_job(session: Session, job: Claimed, result: Result, oru: Outbound | None,
               detail: dict[str, Any]) -> bool:
    """The job is done: its result and (if the EHR wants it) its ORU row, and ``triaged``.

    False, writing nothing, if the lease was lost (:func:`job_held` first rules that out).
    """
    if not complete(session, Job, job.id):
        return False
    session.add(result)
    session.flush()
    outbound_id = None
    if oru is not None:
        oru.result_id = result.id
        session.add(oru)
        session.flush()
        outbound_id = oru.id
    record_event(session, "triaged", message_id=job.ref_id, job_id=job.id, outbound_id=outbound_id,
                 detail={"result_id": result.id, **detail})
    return True


def fail_job(session: Session, job: Claimed, error: str | None, delay_s: float) -> str:
    """A triage attempt failed: retry later, or dead once its attempts are used up."""
    state = retry_later(session, Job, job.id, error or "no outcome", delay_s)
    record_event(session, "triage_failed", message_id=job.ref_id, job_id=job.id,
                 detail={"error": error, "state": state, "attempt": job.attempts})
    return state


def release_jobs(session: Session, jobs: list[Claimed], error: str) -> dict[int, str]:
    """Give a failed batch's jobs back at once (:func:`release`), one event each."""
    states = release(session, Job, jobs, error)
    for job in jobs:
        if job.id in states:
            record_event(session, "triage_failed", message_id=job.ref_id, job_id=job.id,
                         detail={"error": error, "state": states[job.id], "attempt": job.attempts})
    return states


def requeue_jobs(sessions: sessionmaker[Session], ids: list[int] | None, *,
                 actor: str, peer: str | None = None) -> int:
    """Operator action: dead jobs (the given ids, or all with ``ids=None``) get fresh attempts.

    Raises AdminError, changing nothing, when a given id is unknown or not dead.
    """
    with sessions.begin() as s:
        if ids is not None:
            _require_state(s, JOBS, ids, (Phase.DEAD,), "job")
        count = requeue(s, Job, ids)
        record_event(s, "admin_jobs_requeue", actor=actor, peer=peer, detail={"ids": ids, "requeued": count})
    return count


# --- outbound ------------------------------------------------------------------------------

def _first_oru_delivered() -> Any:
    """A correction is due only once the result's first ORU is delivered: the EHR never
    gets the correction (OBR-25 C) before what it corrects."""
    first = aliased(Outbound)
    pending_first = (exists().where(first.result_id == Outbound.result_id,
                                    first.kind == OutboundKind.RESULT.value,
                                    first.state != OUTBOUND[Phase.FINISHED]))
    return or_(Outbound.kind != OutboundKind.CORRECTION.value, ~pending_first)


def claim_outbound(session: Session, lease_s: float) -> Claimed | None:
    """The sender's claim: the most urgent due ORU (a correction after its first ORU)."""
    claimed = claim(session, Outbound, 1, lease_s, ready=_first_oru_delivered())
    return claimed[0] if claimed else None


def record_sent(session: Session, outbound_id: int, peer: str | None, detail: dict[str, Any]) -> None:
    """An attempt is about to go on the wire (``sent``)."""
    record_event(session, "sent", outbound_id=outbound_id, peer=peer, detail=detail)


def keep_payload(session: Session, outbound_id: int, payload: bytes) -> bytes | None:
    """Store the composed ORU once; None if this call stored it, else the bytes kept before
    (a concurrent composer's win is kept: every attempt sends identical bytes)."""
    if _set(session, OUTBOUND, Outbound.id == outbound_id, Outbound.payload.is_(None), payload=payload):
        return None
    return session.scalar(select(Outbound.payload).where(Outbound.id == outbound_id)) or payload


def note_pdf(session: Session, outbound_id: int, outcome: str, detail: dict[str, Any],
             correction_control_id: str) -> int | None:
    """Record a late or missing PDF; a late one gets its correction row (OBR-25 C, MSH-10
    ``correction_control_id``), in the same transaction so it cannot be forgotten. Returns
    the correction's id."""
    detail = dict(detail)
    correction_id = None
    if outcome == "late":
        row = session.get_one(Outbound, outbound_id)
        correction = Outbound(result_id=row.result_id, kind=OutboundKind.CORRECTION.value,
                              control_id=correction_control_id, priority=row.priority,
                              max_attempts=row.max_attempts, destination=row.destination)
        session.add(correction)
        session.flush()
        correction_id = detail["correction_outbound_id"] = correction.id
    record_event(session, f"oru_pdf_{outcome}", outbound_id=outbound_id, detail=detail)
    return correction_id


def mark_delivered(session: Session, outbound_id: int, peer: str | None, detail: dict[str, Any]) -> bool:
    """The EHR accepted the ORU. False if our lease had run out meanwhile: the row is
    delivered all the same (the EHR has it; sending it again would duplicate it)."""
    now = db_now(_dialect(session))
    # delivered: earlier errors are history (events), no longer the row's state
    held = complete(session, Outbound, outbound_id, delivered_at=now, last_error=None)
    if not held:
        _set(session, OUTBOUND, Outbound.id == outbound_id, Outbound.state != OUTBOUND[Phase.FINISHED],
             state=OUTBOUND[Phase.FINISHED], lease_until=None, delivered_at=now, last_error=None)
    record_event(session, "delivered", outbound_id=outbound_id, peer=peer, detail=detail)
    return held


def mark_dead(session: Session, outbound_id: int, error: str, peer: str | None,
              detail: dict[str, Any]) -> None:
    """The ORU can never be delivered as it is (e.g. refused with AR): a human must look."""
    dead_letter(session, Outbound, outbound_id, error)
    record_event(session, "dead", outbound_id=outbound_id, peer=peer, detail=detail)


def retry_outbound_later(session: Session, outbound_id: int, error: str, delay_s: float,
                         peer: str | None, detail: dict[str, Any]) -> str:
    """A failed attempt: ``send_failed`` and due after ``delay_s``, or ``dead`` when its
    attempts are used up. Returns the event kind."""
    state = retry_later(session, Outbound, outbound_id, error, delay_s)
    kind = "dead" if state == OUTBOUND[Phase.DEAD] else "send_failed"
    record_event(session, kind, outbound_id=outbound_id, peer=peer, detail=detail)
    return kind


def retry_outbound(sessions: sessionmaker[Session], ids: list[int] | None = None, *,
                   dead: bool = False, actor: str = "cli", peer: str | None = None) -> int:
    """The one operator path to send ORUs again now (CLI ``outbound retry`` and the admin
    page); returns how many rows changed, one ``admin_outbound_requeue`` event.

    * ``ids`` given: each must be dead or pending, else AdminError and nothing changes; dead
      ones get fresh attempts, pending ones lose their backoff.
    * ``ids`` None and ``dead``: every dead row gets fresh attempts.
    * ``ids`` None, not ``dead``: every pending row waiting out a backoff is due now.

    Stored payloads are kept, so a resent ORU has the same bytes and MSH-10 as before.
    """
    with sessions.begin() as s:
        if ids is not None:
            _require_state(s, OUTBOUND, ids, (Phase.DEAD, Phase.WAITING), "outbound row")
        revived = requeue(s, Outbound, ids) if (ids is not None or dead) else 0
        hurried = 0
        if ids is not None or not dead:
            now = db_now(_dialect(s))
            where = [Outbound.state == OUTBOUND[Phase.WAITING], Outbound.run_after > now]
            if ids is not None:
                where.append(Outbound.id.in_(ids))
            hurried = _set(s, OUTBOUND, *where, run_after=now)
        record_event(s, "admin_outbound_requeue", actor=actor, peer=peer,
                     detail={"ids": ids, "dead": dead, "requeued": revived, "hurried": hurried})
    return revived + hurried


# --- reading -------------------------------------------------------------------------------

def depths(session: Session) -> list[tuple[str, dict[str, int], datetime | str | None]]:
    """Per queue: rows by state, and when the oldest waiting row was created (metrics)."""
    out = []
    for q in (JOBS, OUTBOUND):
        t = q.table
        counts = {state: count for state, count in session.execute(
            select(t.state, func.count()).group_by(t.state))}
        oldest = session.scalar(select(func.min(t.created_at)).where(t.state == q[Phase.WAITING]))
        out.append((q.name, counts, oldest))
    return out
