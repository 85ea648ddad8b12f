"""Operator actions and views on real SQLite and real PostgreSQL: purge, replay, requeue."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ecg_gateway.store.admin import REPLAY_PRIORITY, AdminError, purge, replay
from ecg_gateway.store.models import Event, Job, Message, Outbound, Result
from ecg_gateway.store.overview import dead_letters, destinations, last_delivery_errors, recent_ecgs
from ecg_gateway.store.queue import requeue_jobs, retry_outbound
from tests.support.admin_rows import CANARY, add_ecg


def _count(sessions, table: type) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(table)))


def _ids(sessions, table: type) -> set[int]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return set(s.scalars(select(table.id)))


def _events(sessions, kind: str) -> list[Event]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


@pytest.mark.parametrize("batch", [1, 500])
def test_purge_deletes_only_old_finished_messages_with_their_rows(sessions, batch: int) -> None:
    old_delivered = add_ecg(sessions, age_days=40)
    old_dead_oru = add_ecg(sessions, outbound_state="dead", age_days=40)
    old_dead_job = add_ecg(sessions, job_state="dead", category=None, age_days=40)
    old_no_oru = add_ecg(sessions, category="normal", outbound_state=None, age_days=40)
    old_pending = add_ecg(sessions, outbound_state="pending", age_days=40)  # not delivered yet
    old_sending = add_ecg(sessions, outbound_state="sending", age_days=40)
    old_queued = add_ecg(sessions, job_state="queued", category=None, age_days=40)
    recent = add_ecg(sessions, age_days=10)
    with sessions.begin() as s:  # a replayed message: old result done, new job still running
        s.add(Job(message_id=old_delivered["message"], state="running", attempts=1))
    keep = [old_pending, old_sending, old_queued, recent, old_delivered]
    gone = [old_dead_oru, old_dead_job, old_no_oru]
    events_before = _count(sessions, Event)

    preview = purge(sessions, 30 * 86400, actor="test", dry_run=True)
    assert preview.to_json() == {"messages": 3, "jobs": 3, "results": 2, "outbound": 1, "dry_run": True}
    assert _count(sessions, Message) == 8 and _count(sessions, Event) == events_before  # nothing changed

    report = purge(sessions, 30 * 86400, actor="test", batch=batch)
    assert report.to_json() == {**preview.to_json(), "dry_run": False}
    assert _ids(sessions, Message) == {k["message"] for k in keep}
    assert not {g["job"] for g in gone} & _ids(sessions, Job)
    assert not {g["result"] for g in gone if g["result"]} & _ids(sessions, Result)
    assert old_dead_oru["outbound"] not in _ids(sessions, Outbound)
    assert _count(sessions, Event) == events_before + 1  # the audit trail stays, plus the purge
    (event,) = _events(sessions, "admin_purge")
    assert event.actor == "test" and event.detail["messages"] == 3 and event.detail["older_than_s"] == 30 * 86400
    assert purge(sessions, 30 * 86400, actor="test").messages == 0  # idempotent


def test_replay_adds_a_low_priority_job_and_keeps_old_results(sessions) -> None:  # type: ignore[no-untyped-def]
    done = add_ecg(sessions)
    (created,) = replay(sessions, [done["message"]], max_attempts=3, actor="cli")
    with sessions() as s:
        job = s.get_one(Job, created["job_id"])
        assert (job.message_id, job.state, job.priority, job.kind) == (done["message"], "queued", REPLAY_PRIORITY,
                                                                       "triage")
        assert s.scalar(select(func.count()).select_from(Result)) == 1  # the old result stays
    (event,) = _events(sessions, "admin_replay")
    assert (event.message_id, event.job_id, event.actor) == (done["message"], created["job_id"], "cli")


def test_replay_refuses_unknown_or_busy_messages_and_changes_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    done = add_ecg(sessions)
    busy = add_ecg(sessions, job_state="queued", category=None)
    with pytest.raises(AdminError, match=rf"message 999999 not found; message {busy['message']} already has "
                                         rf"triage job {busy['job']} in progress"):
        replay(sessions, [done["message"], 999999, busy["message"]], max_attempts=3, actor="cli")
    assert _count(sessions, Job) == 2 and _events(sessions, "admin_replay") == []


def test_requeue_jobs_and_outbound_only_from_dead(sessions) -> None:  # type: ignore[no-untyped-def]
    dead = add_ecg(sessions, job_state="dead", category=None, last_error="decode failed: UndecodableError")
    dead2 = add_ecg(sessions, job_state="dead", category=None)
    done = add_ecg(sessions, outbound_state="dead")
    with pytest.raises(AdminError, match=rf"job {done['job']} is done, not dead; job 999999 not found"):
        requeue_jobs(sessions, [dead["job"], done["job"], 999999], actor="cli")
    with sessions() as s:
        assert s.get_one(Job, dead["job"]).state == "dead"  # nothing changed
    assert requeue_jobs(sessions, [dead["job"]], actor="cli") == 1
    assert requeue_jobs(sessions, None, actor="cli") == 1  # every dead one: dead2
    with sessions() as s:
        rows = [s.get_one(Job, i) for i in (dead["job"], dead2["job"])]
        assert [(r.state, r.attempts) for r in rows] == [("queued", 0), ("queued", 0)]
    with pytest.raises(AdminError, match="is delivered, not dead or pending"):
        retry_outbound(sessions, [add_ecg(sessions)["outbound"]], actor="web", peer="127.0.0.1")
    assert retry_outbound(sessions, [done["outbound"]], actor="web", peer="127.0.0.1") == 1
    kinds = [(e.kind, e.actor) for e in _events(sessions, "admin_outbound_requeue")]
    assert kinds == [("admin_outbound_requeue", "web")]
    assert len(_events(sessions, "admin_jobs_requeue")) == 2


def test_views_show_states_and_times_but_never_identifiers(sessions) -> None:  # type: ignore[no-untyped-def]
    rows = [add_ecg(sessions, age_days=0.001), add_ecg(sessions, outbound_state="dead"),
            add_ecg(sessions, job_state="dead", category=None, last_error="decode failed: X")]
    with sessions() as s:
        recent = recent_ecgs(s, limit=2)
        dead = dead_letters(s)
        dests = destinations(s)
        errors = last_delivery_errors(s)
    assert [r["message_id"] for r in recent] == [rows[2]["message"], rows[1]["message"]]
    assert recent[0]["job_state"] == "dead" and recent[0]["category"] is None
    assert recent[1]["outbound_state"] == "dead" and recent[1]["triage_ms"] == 12.5
    assert [j["id"] for j in dead["jobs"]] == [rows[2]["job"]]
    assert [(o["id"], o["category"]) for o in dead["outbound"]] == [(rows[1]["outbound"], "acute")]
    assert dests == {"127.0.0.1:2576": {"delivered": 1, "dead": 1}}
    assert errors[0]["outbound_id"] == rows[1]["outbound"]
    text = repr((recent, dead, dests, errors))
    assert not any(value in text for value in CANARY.values())
