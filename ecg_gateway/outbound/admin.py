"""Operator view of the outbound queue (``ecg-gateway outbound list``); the action,
``outbound retry``, is ``store.queue.retry_outbound``.

No PHI leaves here: rows are described by ids, control id, state, attempts, the last error
(codes and our own words only, see ack.py) and the triage category.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.store.db import iso
from ecg_gateway.store.models import Outbound, OutboundState, Result

STATES = tuple(s.value for s in OutboundState)


def list_outbound(sessions: sessionmaker[Session], state: str | None = None) -> list[dict[str, Any]]:
    """All outbound rows (or those in ``state``), oldest first."""
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
    stmt = (select(Outbound, Result.category).join(Result, Result.id == Outbound.result_id)
            .order_by(Outbound.id))
    if state is not None:
        stmt = stmt.where(Outbound.state == state)
    with sessions() as s:
        return [_describe(row, category) for row, category in s.execute(stmt).all()]


def _describe(row: Outbound, category: str) -> dict[str, Any]:
    """The row's current state; a delivered row's earlier errors are history (events), not
    its state (rows delivered before the sender cleared them still carry one)."""
    delivered = row.state == OutboundState.DELIVERED.value
    return {
        "id": row.id, "result_id": row.result_id, "control_id": row.control_id, "kind": row.kind,
        "state": row.state, "category": category, "priority": row.priority,
        "attempts": row.attempts, "max_attempts": row.max_attempts,
        "last_error": None if delivered else row.last_error, "destination": row.destination,
        "composed": row.payload is not None, "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.run_after) if row.state == "pending" else None,
        "delivered_at": iso(row.delivered_at),
    }
