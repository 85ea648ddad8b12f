"""Scheduled housekeeping: the daily retention purge (config section ``retention``).

APScheduler's AsyncIOScheduler on the daemon's event loop fires a cron trigger at
``retention.run_at`` local time; the purge itself runs in the scheduler's thread pool
(the DB work blocks) and deletes in batches, so receivers keep committing meanwhile.
A purge missed while the daemon was down runs at the next start if it is less than a
day late (``misfire_grace_time``); overlapping runs are coalesced into one.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.config import RetentionConfig
from ecg_gateway.store.admin import PurgeReport, purge

log = structlog.get_logger(__name__)

JOB_ID = "retention_purge"
DAY_S = 86400


class Housekeeping:
    """Owns the scheduler; ``start`` inside the running event loop, ``stop`` at shutdown."""

    def __init__(self, sessions: sessionmaker[Session], config: RetentionConfig) -> None:
        self._sessions = sessions
        self._config = config
        self.scheduler = AsyncIOScheduler(executors={"default": ThreadPoolExecutor(1)})
        self._stopping = threading.Event()

    @property
    def enabled(self) -> bool:
        return self._config.days is not None

    def start(self) -> None:
        if not self.enabled:
            log.info("retention_disabled", reason="retention.days is null: data is kept forever")
            return
        hour, minute = (int(part) for part in self._config.run_at.split(":"))
        job = self.scheduler.add_job(self.purge_now, CronTrigger(hour=hour, minute=minute),
                                     id=JOB_ID, max_instances=1, coalesce=True,
                                     misfire_grace_time=DAY_S)
        self.scheduler.start()
        log.info("retention_scheduled", days=self._config.days, run_at=self._config.run_at,
                 next_run=str(job.next_run_time))

    def purge_now(self) -> PurgeReport | None:
        """One retention run; errors are logged (the next day's run tries again)."""
        assert self._config.days is not None
        try:
            report = purge(self._sessions, self._config.days * DAY_S, actor="retention",
                           stop=self._stopping.is_set)
        except Exception as exc:  # noqa: BLE001 - e.g. database down: log, retry tomorrow
            log.error("retention_purge_failed", error=type(exc).__name__)
            return None
        log.info("retention_purged", days=self._config.days, **report.to_json())
        return report

    def run_soon(self) -> Any:
        """Fire the scheduled job now (operators and tests); returns the APScheduler job."""
        from datetime import datetime

        job = self.scheduler.get_job(JOB_ID)
        return job.modify(next_run_time=datetime.now(self.scheduler.timezone)) if job else None

    def stop(self) -> None:
        """A purge in progress ends after its current batch (each batch is one transaction)."""
        self._stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
