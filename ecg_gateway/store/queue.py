"""A lease-based work queue over ``jobs`` and ``outbound`` rows, on SQLite and PostgreSQL.

A claim is one ``UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING``
statement: on SQLite writers are serialized (BEGIN IMMEDIATE), so it is atomic; on
PostgreSQL SKIP LOCKED keeps concurrent claimers off each other's rows. Rows whose lease
expired (a crashed worker) are claimable again in the same statement, and rows that have
used up their attempts go to ``dead`` first. Leases use the database clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, true, update
from sqlalchemy.orm import Session

from ecg_gateway.store.db import db_now, db_now_plus
from ecg_gateway.store.models import Event, Job, Outbound

#: A claimable table.
QueueTable = type[Job] | type[Outbound]

#: The states each claimable table uses: (waiting, leased, finished, dead).
STATES: dict[QueueTable, tuple[str, str, str, str]] = {
    Job: ("queued", "running", "done", "dead"),
    Outbound: ("pending", "sending", "delivered", "dead"),
}


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    attempts: int
    max_attempts: int
    ref_id: int  # jobs.message_id or outbound.result_id


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _ref_column(table: QueueTable) -> Any:
    return Job.message_id if table is Job else Outbound.result_id


def claim(session: Session, table: QueueTable, limit: int, lease_s: float, kind: str | None = None,
          isolate_expired: bool = False, ready: Any = None) -> list[Claimed]:
    """Lease up to ``limit`` due rows, highest priority (lowest number) first, oldest first.

    ``isolate_expired``: while rows with an expired lease exist (their process died holding
    them), claim one of those alone. A crash costs every row of the batch it interrupted one
    attempt; re-running that batch row by row means a row that crashes the process again
    uses up only its own attempts, not its batch-mates' (the chaos run lost 11 % of ECGs to
    dead jobs without this). ``ready``: one more condition a due row must meet (a correction
    ORU waits for the first one). Must run inside the caller's transaction; the caller commits.
    """
    waiting, leased, _, dead = STATES[table]
    dialect = _dialect(session)
    now = db_now(dialect)
    expired = and_(table.state == leased, table.lease_until < now)
    session.execute(
        update(table)
        .where(expired, table.attempts >= table.max_attempts)
        .values(state=dead, lease_until=None, last_error="lease expired on the last attempt")
        .execution_options(synchronize_session=False)
    )
    due = or_(and_(table.state == waiting, table.run_after <= now), expired)
    of_kind = (Job.kind == kind) if kind is not None and table is Job else true()
    if ready is not None:
        of_kind = and_(of_kind, ready)
    if isolate_expired and session.execute(select(table.id).where(expired, of_kind).limit(1)).first():
        due, limit = expired, 1
    candidates = select(table.id).where(due, of_kind)
    candidates = candidates.order_by(table.priority, table.id).limit(limit)
    if dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        update(table)
        .where(table.id.in_(candidates.scalar_subquery()))
        .values(state=leased, lease_until=db_now_plus(dialect, lease_s), attempts=table.attempts + 1)
        .returning(table.id, table.attempts, table.max_attempts, _ref_column(table))
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    claimed = [Claimed(id=r[0], attempts=r[1], max_attempts=r[2], ref_id=r[3]) for r in rows]
    return sorted(claimed, key=lambda c: c.id)


def complete(session: Session, table: QueueTable, row_id: int, **values: Any) -> bool:
    """Mark a leased row finished; False if we no longer hold it (lease lost)."""
    _, leased, finished, _ = STATES[table]
    result = session.execute(
        update(table)
        .where(table.id == row_id, table.state == leased)
        .values(state=finished, lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def retry_later(session: Session, table: QueueTable, row_id: int, error: str, delay_s: float) -> str:
    """Give a leased row back for a later attempt, or to ``dead`` if attempts are used up.

    Returns the new state.
    """
    waiting, leased, _, dead = STATES[table]
    row = session.execute(
        select(table.attempts, table.max_attempts).where(table.id == row_id)
    ).one()
    state = dead if row.attempts >= row.max_attempts else waiting
    session.execute(
        update(table)
        .where(table.id == row_id, table.state == leased)
        .values(state=state, lease_until=None, last_error=error[:2000],
                run_after=db_now_plus(_dialect(session), delay_s))
        .execution_options(synchronize_session=False)
    )
    return state


def release(session: Session, table: QueueTable, claims: list[Claimed], error: str) -> dict[int, str]:
    """Give back rows whose batch failed (issue #29 D4): due at once, not after the lease.

    The live claimer knows its batch failed (e.g. the database connection dropped at commit),
    so its rows need not wait out the lease; the attempt counts, so a row whose attempts are
    used up goes to ``dead`` as an expired lease would. Only rows still held on the claimed
    attempt are touched. Returns the new state of each released row.
    """
    waiting, leased, _, dead = STATES[table]
    now, states = db_now(_dialect(session)), {}
    for c in claims:
        state = dead if c.attempts >= c.max_attempts else waiting
        result = session.execute(
            update(table)
            .where(table.id == c.id, table.state == leased, table.attempts == c.attempts)
            .values(state=state, lease_until=None, last_error=error[:2000], run_after=now)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], result).rowcount == 1:
            states[c.id] = state
    return states


def dead_letter(session: Session, table: QueueTable, row_id: int, error: str) -> None:
    _, _, _, dead = STATES[table]
    session.execute(
        update(table).where(table.id == row_id)
        .values(state=dead, lease_until=None, last_error=error[:2000])
        .execution_options(synchronize_session=False)
    )


def requeue(session: Session, table: QueueTable, row_ids: list[int] | None = None) -> int:
    """Operator action: put dead rows (all, or the given ids) back with fresh attempts."""
    waiting, _, _, dead = STATES[table]
    stmt = update(table).where(table.state == dead)
    if row_ids is not None:
        stmt = stmt.where(table.id.in_(row_ids))
    result = session.execute(
        stmt.values(state=waiting, attempts=0, lease_until=None, run_after=db_now(_dialect(session)))
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount


def record_event(session: Session, kind: str, **fields: Any) -> None:
    """Append to the event log (no PHI: ids, UIDs, codes only)."""
    session.add(Event(kind=kind, detail=fields.pop("detail", {}), **fields))
