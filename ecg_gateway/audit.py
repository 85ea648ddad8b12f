"""The audit trail: the append-only ``events`` table, its DICOM PS3.15 A.5 mapping, its export.

Every stage already writes its transitions in its own transaction (received, triaged,
delivered, dead, ...). This module adds what has no transaction of its own — refusals,
security alerts, application start/stop, configuration and admin actions — and reads the
trail back for ``ecg-gateway audit``. Events carry ids, UIDs, codes, peers and actors, never
PHI (patient data lives only in ``messages``).

Refusals and alerts are written by a background thread so a protocol answer never waits
for the database (and a refusal flood is rate-limited per peer address instead of turning
into a write flood). The database keeps the table append-only (migration 0002 triggers).
"""

from __future__ import annotations

import contextlib
import getpass
import queue
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.store.models import Event

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Code:
    """A DICOM coded value (scheme DCM, PS3.16 CID 400/401)."""

    value: str
    meaning: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.value, "scheme": "DCM", "meaning": self.meaning}


APPLICATION_ACTIVITY = Code("110100", "Application Activity")
AUDIT_LOG_USED = Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
EXPORT = Code("110106", "Export")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """How one event kind reads as a PS3.15 A.5 audit message."""

    event_id: Code
    action: str  # EventActionCode: C R U D E
    outcome: int  # EventOutcomeIndicator: 0 4 8 12
    event_type: Code | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"EventID": self.event_id.to_json(), "EventActionCode": self.action,
                               "EventOutcomeIndicator": self.outcome}
        if self.event_type is not None:
            out["EventTypeCode"] = self.event_type.to_json()
        return out


#: Event kind -> PS3.15 A.5 message. Kinds absent here (e.g. ``sent``, an attempt starting)
#: are internal transitions and export with ``"dicom": null``.
DICOM_AUDIT: dict[str, AuditMessage] = {
    "app_start": AuditMessage(APPLICATION_ACTIVITY, "E", SUCCESS, APPLICATION_START),
    "app_stop": AuditMessage(APPLICATION_ACTIVITY, "E", SUCCESS, APPLICATION_STOP),
    "config_loaded": AuditMessage(SECURITY_ALERT, "E", SUCCESS, SOFTWARE_CONFIGURATION),
    "model_loaded": AuditMessage(SECURITY_ALERT, "E", SUCCESS, SOFTWARE_CONFIGURATION),
    "received": AuditMessage(INSTANCES_TRANSFERRED, "C", SUCCESS),
    "received_duplicate": AuditMessage(INSTANCES_TRANSFERRED, "R", SUCCESS),
    "received_conflict": AuditMessage(INSTANCES_TRANSFERRED, "R", MINOR_FAILURE),
    "rejected": AuditMessage(INSTANCES_TRANSFERRED, "C", MINOR_FAILURE),
    "triaged": AuditMessage(INSTANCES_ACCESSED, "R", SUCCESS),
    "triage_failed": AuditMessage(INSTANCES_ACCESSED, "R", MINOR_FAILURE),
    "delivered": AuditMessage(EXPORT, "R", SUCCESS),
    "send_failed": AuditMessage(EXPORT, "R", MINOR_FAILURE),
    "dead": AuditMessage(EXPORT, "R", SERIOUS_FAILURE),
    "security_alert": AuditMessage(SECURITY_ALERT, "E", MINOR_FAILURE, NODE_AUTHENTICATION),
    "outbound_retry": AuditMessage(SECURITY_ALERT, "E", SUCCESS, RESTRICTED_FUNCTION),  # before #31
    "admin_jobs_requeue": AuditMessage(SECURITY_ALERT, "E", SUCCESS, RESTRICTED_FUNCTION),
    "admin_outbound_requeue": AuditMessage(SECURITY_ALERT, "E", SUCCESS, RESTRICTED_FUNCTION),
    "admin_replay": AuditMessage(SECURITY_ALERT, "E", SUCCESS, RESTRICTED_FUNCTION),
    "admin_purge": AuditMessage(STUDY_DELETED, "D", SUCCESS),
    "admin_denied": AuditMessage(USER_AUTHENTICATION, "E", MINOR_FAILURE, LOGIN),
    "audit_log_used": AuditMessage(AUDIT_LOG_USED, "R", SUCCESS),
}


def record_event(session: Session, kind: str, **fields: Any) -> None:
    """Append to the event log in the caller's transaction (no PHI: ids, UIDs, codes only).

    Queue transitions record theirs in ``store/queue.py``; this is for the rest (receipt,
    model load, admin actions that change no queue row)."""
    session.add(Event(kind=kind, detail=fields.pop("detail", {}), **fields))


def local_actor() -> str:
    """Who runs a local command: ``user@host`` (the OS account, not a patient)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


# --- writing ----------------------------------------------------------------------------------

class Auditor:
    """Writes audit events off the protocol path: ``record`` queues, a daemon thread commits.

    ``alert`` is rate-limited to one event per (reason, address) per ``alert_interval_s``; the
    rest are counted into the next event's ``suppressed``. A full queue drops (and logs) events
    rather than block a receiver.
    """

    def __init__(self, sessions: sessionmaker[Session], lock: Any = None, *,
                 alert_interval_s: float = 60.0, max_queued: int = 10_000) -> None:
        self._sessions = sessions
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._queue: queue.Queue[Event | None] = queue.Queue(max_queued)
        self._alert_interval_s = alert_interval_s
        self._alerts: dict[tuple[str, str], tuple[float, int]] = {}
        self._alerts_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0

    def record(self, kind: str, *, peer: str | None = None, actor: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Queue one event (never blocks, never raises)."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(Event(kind=kind, peer=peer, actor=actor, detail=detail or {}))
        except queue.Full:
            self.dropped += 1
            log.error("audit_event_dropped", kind=kind, dropped=self.dropped)

    def alert(self, reason: str, peer: str | None, **detail: Any) -> None:
        """A security alert (refused connection, failed TLS, unknown AE, oversized PDU ...)."""
        address = (peer or "").rsplit(":", 1)[0].split("@")[-1]
        key, now = (reason, address), time.monotonic()
        with self._alerts_lock:
            last, suppressed = self._alerts.get(key, (float("-inf"), 0))
            if now - last < self._alert_interval_s:
                self._alerts[key] = (last, suppressed + 1)
                return
            self._alerts[key] = (now, 0)
        self.record("security_alert", peer=peer, detail={"reason": reason, "suppressed": suppressed, **detail})

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([e for e in batch if e is not None])
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, events: list[Event]) -> None:
        for attempt in range(3):
            try:
                with self._lock, self._sessions.begin() as session:
                    session.add_all(events)
                return
            except SQLAlchemyError as exc:
                log.warning("audit_write_failed", error=type(exc).__name__, events=len(events), attempt=attempt + 1)
                time.sleep(0.5 * (attempt + 1))
        self.dropped += len(events)
        log.error("audit_events_lost", events=len(events), kinds=sorted({e.kind for e in events}))


# --- reading ----------------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time; naive values are UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def query_events(session: Session, *, since: datetime | None = None, until: datetime | None = None,
                 kinds: list[str] | None = None, limit: int | None = None) -> list[Event]:
    """Events in id order (= commit order), optionally filtered by time and kind."""
    stmt = select(Event).order_by(Event.id)
    if kinds:
        stmt = stmt.where(Event.kind.in_(kinds))
    dialect = session.get_bind().dialect.name
    for bound, op in ((since, "ge"), (until, "lt")):
        if bound is None:
            continue
        # SQLite stores CURRENT_TIMESTAMP text in UTC without a zone: compare in that layout.
        value: Any = (bound.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if dialect == "sqlite"
                      else bound)
        stmt = stmt.where(Event.at >= value if op == "ge" else Event.at < value)
    if limit is not None:
        stmt = stmt.order_by(None).order_by(Event.id.desc()).limit(limit)
        return sorted(session.scalars(stmt).all(), key=lambda e: e.id)
    return list(session.scalars(stmt).all())


def export(event: Event) -> dict[str, Any]:
    """One event as a JSON object: our fields plus its PS3.15 A.5 reading under ``dicom``."""
    at = _as_utc(event.at)
    mapping = DICOM_AUDIT.get(event.kind)
    return {
        "id": event.id, "at": at.isoformat() if at else None, "kind": event.kind,
        "actor": event.actor, "peer": event.peer, "message_id": event.message_id,
        "job_id": event.job_id, "outbound_id": event.outbound_id, "detail": event.detail,
        "dicom": mapping.to_json() if mapping else None,
    }
