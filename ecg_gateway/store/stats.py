"""Counts for ``ecg-gateway status`` and the ops endpoints (no PHI)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecg_gateway.store.models import Event, Job, Message, Outbound, Result


def _group(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    return {str(key): int(count) for key, count in rows}


def status_counts(session: Session) -> dict[str, Any]:
    """The stable ``status --json`` core; later additions go in new keys only."""
    return {
        "messages": int(session.scalar(select(func.count()).select_from(Message)) or 0),
        "jobs": _group(session, Job.state),
        "results": _group(session, Result.category),
        "outbound": _group(session, Outbound.state),
    }


def last_errors(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Job.id, Job.state, Job.last_error).where(Job.last_error.is_not(None))
        .order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit)
    ).all()
    return [{"job_id": r.id, "state": r.state, "error": r.last_error} for r in rows]


def last_model(session: Session) -> dict[str, Any] | None:
    """The model the worker last loaded, as recorded in the event log."""
    detail = session.scalar(
        select(Event.detail).where(Event.kind == "model_loaded").order_by(Event.id.desc()).limit(1)
    )
    return dict(detail) if detail else None
