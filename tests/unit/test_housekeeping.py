"""The retention job on APScheduler: scheduled at ``retention.run_at``, purges when it fires."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from ecg_gateway.config import RetentionConfig
from ecg_gateway.housekeeping import JOB_ID, Housekeeping
from ecg_gateway.store.models import Event, Message
from tests.support.admin_rows import add_ecg


async def test_retention_job_is_scheduled_daily_and_purges_when_it_fires(sessions: Any) -> None:
    old = add_ecg(sessions, age_days=8)
    old_pending = add_ecg(sessions, outbound_state="pending", age_days=8)
    fresh = add_ecg(sessions, age_days=6)
    keeper = Housekeeping(sessions, RetentionConfig(days=7, run_at="02:15"))
    keeper.start()
    try:
        job = keeper.scheduler.get_job(JOB_ID)
        assert (job.next_run_time.hour, job.next_run_time.minute) == (2, 15)
        assert job.misfire_grace_time == 86400 and job.coalesce
        keeper.run_soon()
        for _ in range(100):
            with sessions() as s:
                event = s.scalars(select(Event).where(Event.kind == "admin_purge")).first()
            if event is not None:
                break
            await asyncio.sleep(0.05)
        assert event is not None and event.actor == "retention" and event.detail["messages"] == 1
        with sessions() as s:
            assert set(s.scalars(select(Message.id))) == {old_pending["message"], fresh["message"]}
        assert old["message"] not in {old_pending["message"], fresh["message"]}
        next_run = keeper.scheduler.get_job(JOB_ID).next_run_time
        assert (next_run.hour, next_run.minute) == (2, 15)  # back on the daily schedule
    finally:
        keeper.stop()
    await asyncio.sleep(0.05)  # AsyncIOScheduler shuts down on its event loop
    assert not keeper.scheduler.running


async def test_retention_disabled_schedules_nothing(sessions: Any) -> None:
    keeper = Housekeeping(sessions, RetentionConfig())
    keeper.start()
    assert not keeper.scheduler.running and keeper.scheduler.get_jobs() == []
    keeper.stop()
