"""Operator actions on the stored ECGs: list jobs, replay (re-triage) messages, purge.

Used by the admin CLI (``ecg-gateway jobs|replay|purge``), the web page and the daily
retention job; requeues change a queue row's state, so they live in ``store.queue``. Each
action checks before it changes anything (a bad id changes nothing)
and records an ``admin_<action>`` event naming the actor; events carry ids and counts only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.audit import record_event
from ecg_gateway.errors import AdminError
from ecg_gateway.store.db import db_now_plus, iso
from ecg_gateway.store.models import Job, JobState, Message, Outbound, OutboundState, Result
from ecg_gateway.store.queue import enqueue_triage

#: Replays run after live traffic: claims take the lowest priority number first (live = 100).
REPLAY_PRIORITY = 200
PURGE_BATCH = 500
JOB_STATES = tuple(s.value for s in JobState)
_BUSY_JOB = (JobState.QUEUED.value, JobState.RUNNING.value)
_BUSY_OUTBOUND = (OutboundState.PENDING.value, OutboundState.SENDING.value)


def list_jobs(sessions: sessionmaker[Session], state: str | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` jobs (or those in ``state``), newest first; no PHI."""
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {', '.join(JOB_STATES)}")
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    with sessions() as s:
        return [{"id": j.id, "message_id": j.message_id, "kind": j.kind, "state": j.state,
                 "priority": j.priority, "attempts": j.attempts, "max_attempts": j.max_attempts,
                 "last_error": j.last_error, "created_at": iso(j.created_at),
                 "updated_at": iso(j.updated_at)} for j in s.scalars(stmt)]


def replay(sessions: sessionmaker[Session], message_ids: list[int], *, max_attempts: int,
           actor: str, peer: str | None = None) -> list[dict[str, int]]:
    """A new triage job per message, so the current model writes a new result.

    Old results stay (``results.job_id`` is unique: a new job makes a new result row). The
    new result follows the delivery policy like any other: if its category is in
    ``outbound.categories`` a new ORU (new MSH-10) goes to the EHR. Raises AdminError,
    changing nothing, for an unknown message or one whose triage is still in progress.
    """
    with sessions.begin() as s:
        known = set(s.scalars(select(Message.id).where(Message.id.in_(message_ids))))
        busy = dict(s.execute(select(Job.message_id, Job.id).where(
            Job.message_id.in_(message_ids), Job.state.in_(_BUSY_JOB))).all())
        problems = [f"message {m} not found" if m not in known else
                    f"message {m} already has triage job {busy[m]} in progress"
                    for m in message_ids if m not in known or m in busy]
        if problems:
            raise AdminError("; ".join(problems))
        created = []
        for message_id in dict.fromkeys(message_ids):  # each message once, in the given order
            job = enqueue_triage(s, message_id, REPLAY_PRIORITY, max_attempts)
            record_event(s, "admin_replay", message_id=message_id, job_id=job.id, actor=actor,
                         peer=peer, detail={"job_id": job.id})
            created.append({"message_id": message_id, "job_id": job.id})
    return created


@dataclass(frozen=True, slots=True)
class PurgeReport:
    messages: int
    jobs: int
    results: int
    outbound: int
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "jobs": self.jobs, "results": self.results,
                "outbound": self.outbound, "dry_run": self.dry_run}


def purge(sessions: sessionmaker[Session], older_than_s: float, *, actor: str,
          dry_run: bool = False, batch: int = PURGE_BATCH,
          stop: Callable[[], bool] | None = None) -> PurgeReport:
    """Delete finished messages received more than ``older_than_s`` ago, with their rows.

    A message goes only when none of its jobs is queued/running and none of its ORUs is
    pending/sending; dead rows are finished. Events are kept (ids and codes, no PHI).
    Deletes in batches of ``batch`` messages, one transaction each, so a running daemon's
    writers wait at most one batch; ``stop`` (checked between batches) ends it early.
    """
    totals = {"messages": 0, "jobs": 0, "results": 0, "outbound": 0}
    if dry_run:
        with sessions() as s:
            totals = _count_rows(s, _purgeable(s, older_than_s).scalar_subquery())
    else:
        while stop is None or not stop():
            with sessions.begin() as s:
                ids = list(s.scalars(_purgeable(s, older_than_s).limit(batch)))
                if not ids:
                    break
                for key, count in _delete_rows(s, ids).items():
                    totals[key] += count
    report = PurgeReport(dry_run=dry_run, **totals)
    if not dry_run:
        with sessions.begin() as s:
            record_event(s, "admin_purge", actor=actor,
                         detail={"older_than_s": older_than_s, **report.to_json()})
    return report


def _purgeable(s: Session, older_than_s: float) -> Any:
    cutoff = db_now_plus(s.get_bind().dialect.name, -older_than_s)
    busy_job = exists().where(Job.message_id == Message.id, Job.state.in_(_BUSY_JOB))
    busy_oru = (exists().where(Result.message_id == Message.id, Outbound.result_id == Result.id,
                               Outbound.state.in_(_BUSY_OUTBOUND)))
    return (select(Message.id).where(Message.received_at < cutoff, ~busy_job, ~busy_oru)
            .order_by(Message.id))


def _count_rows(s: Session, ids: Any) -> dict[str, int]:
    """What a purge would delete; ``ids`` is the purgeable-messages subquery."""
    def count(table: type, *where: Any, join: Any = None) -> int:
        stmt = select(func.count()).select_from(table)
        if join is not None:
            stmt = stmt.join(*join)
        return int(s.scalar(stmt.where(*where)) or 0)

    return {"messages": count(Message, Message.id.in_(ids)),
            "jobs": count(Job, Job.message_id.in_(ids)),
            "results": count(Result, Result.message_id.in_(ids)),
            "outbound": count(Outbound, Result.message_id.in_(ids),
                              join=(Result, Result.id == Outbound.result_id))}


def _delete_rows(s: Session, ids: list[int]) -> dict[str, int]:
    """Children first (foreign keys): outbound -> results -> jobs -> messages."""
    result_ids = select(Result.id).where(Result.message_id.in_(ids)).scalar_subquery()
    counts = {}
    for key, stmt in (("outbound", delete(Outbound).where(Outbound.result_id.in_(result_ids))),
                      ("results", delete(Result).where(Result.message_id.in_(ids))),
                      ("jobs", delete(Job).where(Job.message_id.in_(ids))),
                      ("messages", delete(Message).where(Message.id.in_(ids)))):
        done = s.execute(stmt.execution_options(synchronize_session=False))
        counts[key] = cast(CursorResult[Any], done).rowcount
    return counts

