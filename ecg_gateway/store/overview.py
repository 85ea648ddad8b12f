"""Read-only views for operators: recent ECGs, dead letters, delivery destinations.

Feeds the admin web page and ``ecg-gateway status``. Rows carry internal ids, states,
categories, codes and times only: never names, patient ids, birth dates or order numbers
(``messages.identifiers`` is never read here).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecg_gateway.store.db import iso
from ecg_gateway.store.models import (
    Event,
    Job,
    JobState,
    Message,
    Outbound,
    OutboundKind,
    OutboundState,
    Result,
)


def recent_ecgs(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` messages with their latest job, result and ORU (newest first)."""
    messages = session.execute(
        select(Message.id, Message.source, Message.received_at)
        .order_by(Message.id.desc()).limit(limit)).all()
    ids = [m.id for m in messages]
    jobs = _latest(session.execute(
        select(Job.message_id, Job.id, Job.state, Job.attempts).where(Job.message_id.in_(ids))
        .order_by(Job.id)).all())
    results = _latest(session.execute(
        select(Result.message_id, Result.id, Result.category, Result.latency_ms, Result.created_at,
               Result.measurements, Result.statements)
        .where(Result.message_id.in_(ids)).order_by(Result.id)).all())
    result_ids = [r.id for r in results.values()]
    oru = {o.result_id: o for o in session.execute(
        select(Outbound.result_id, Outbound.id, Outbound.state, Outbound.delivered_at)
        .where(Outbound.result_id.in_(result_ids), Outbound.kind == OutboundKind.RESULT.value)).all()}
    rows = []
    for m in messages:
        job, result = jobs.get(m.id), results.get(m.id)
        out = oru.get(result.id) if result is not None else None
        rows.append({
            "message_id": m.id, "source": m.source, "received_at": _iso(m.received_at),
            "job_id": job.id if job else None, "job_state": job.state if job else None,
            "attempts": job.attempts if job else None,
            "result_id": result.id if result else None,
            "category": result.category if result else None,
            "triage_ms": round(result.latency_ms, 1) if result and result.latency_ms else None,
            "measurements": dict(result.measurements or {}) if result else {},
            "statements": [str(st.get("code")) for st in result.statements or []] if result else [],
            "outbound_id": out.id if out else None, "outbound_state": out.state if out else None,
            "delivered_at": _iso(out.delivered_at) if out else None,
            "received_to_delivered_s": _seconds(m.received_at, out.delivered_at if out else None),
        })
    return rows


def dead_letters(session: Session, limit: int = 200) -> dict[str, list[dict[str, Any]]]:
    """Dead jobs and dead ORUs, newest first: what needs a human."""
    jobs = session.execute(
        select(Job.id, Job.message_id, Job.attempts, Job.last_error, Job.updated_at)
        .where(Job.state == JobState.DEAD.value).order_by(Job.id.desc()).limit(limit)).all()
    outbound = session.execute(
        select(Outbound.id, Outbound.result_id, Outbound.control_id, Outbound.attempts,
               Outbound.last_error, Outbound.updated_at, Result.category)
        .join(Result, Result.id == Outbound.result_id)
        .where(Outbound.state == OutboundState.DEAD.value).order_by(Outbound.id.desc())
        .limit(limit)).all()
    return {
        "jobs": [{"id": j.id, "message_id": j.message_id, "attempts": j.attempts,
                  "last_error": j.last_error, "updated_at": _iso(j.updated_at)} for j in jobs],
        "outbound": [{"id": o.id, "result_id": o.result_id, "control_id": o.control_id,
                      "category": o.category, "attempts": o.attempts, "last_error": o.last_error,
                      "updated_at": _iso(o.updated_at)} for o in outbound],
    }


def destinations(session: Session) -> dict[str, dict[str, int]]:
    """ORU rows per destination (host:port when the row was written) and state."""
    rows = session.execute(select(Outbound.destination, Outbound.state, func.count())
                           .group_by(Outbound.destination, Outbound.state)).all()
    out: dict[str, dict[str, int]] = {}
    for destination, state, count in rows:
        out.setdefault(destination or "none", {})[state] = int(count)
    return out


def last_delivery_errors(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The latest ORU rows that failed at least once (codes and our own words only)."""
    rows = session.execute(
        select(Outbound.id, Outbound.state, Outbound.attempts, Outbound.last_error)
        .where(Outbound.last_error.is_not(None))
        .order_by(Outbound.updated_at.desc(), Outbound.id.desc()).limit(limit)).all()
    return [{"outbound_id": r.id, "state": r.state, "attempts": r.attempts, "error": r.last_error}
            for r in rows]


def _latest(rows: Sequence[Any]) -> dict[int, Any]:
    """Rows ordered by id, keyed by their first column: the last one per key wins."""
    return {row[0]: row for row in rows}


def _iso(value: datetime | None) -> str | None:
    return iso(value, sep=" ", timespec="milliseconds")  # the page's format: to the millisecond


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def pdf_counts(session: Session) -> dict[str, int]:
    """ORUs whose PDF was late (a correction brought it) or missing, since the start."""
    rows = dict(session.execute(select(Event.kind, func.count()).where(
        Event.kind.in_(("oru_pdf_late", "oru_pdf_missing"))).group_by(Event.kind)).all())
    return {"late": int(rows.get("oru_pdf_late", 0)), "missing": int(rows.get("oru_pdf_missing", 0))}
