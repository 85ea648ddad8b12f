"""Persist an accepted ECG message and its triage job in one transaction.

Both receivers (DICOM C-STORE and HL7 MLLP) call :meth:`Ingestor.accept` *before* they
acknowledge; the acknowledgement is sent only when it returns. A duplicate idempotency key
(SOP Instance UID, or sending facility + MSH-10) stores nothing new and is still a success
for the peer; different bytes under the same key are recorded as a conflict.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.audit import Auditor, record_event
from ecg_gateway.errors import StoreUnavailableError
from ecg_gateway.metrics import ECGS_RECEIVED
from ecg_gateway.store.db import db_now
from ecg_gateway.store.models import Message
from ecg_gateway.store.queue import enqueue_triage

log = structlog.get_logger(__name__)


class IngestOutcome(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # same key, different bytes: kept the first, audited


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: IngestOutcome
    message_id: int


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What a receiver hands to the store once the ECG has decoded and validated."""

    source: str  # "dicom" | "hl7"
    idempotency_key: str
    raw: bytes
    content_type: str
    peer: str | None
    ecg_uid: str | None
    identifiers: dict[str, Any]  # PHI: stored, never logged
    priority: int = 100
    notes: dict[str, str] = field(default_factory=dict)  # conformance remarks for the received event


class Ingestor:
    """Commits inbound messages; wakes the worker after each commit."""

    def __init__(self, sessions: sessionmaker[Session], max_attempts: int = 3,
                 on_commit: Callable[[], None] | None = None, serialize: bool | None = None) -> None:
        """``serialize`` (default: on for SQLite): receivers take turns in-process before
        committing. SQLite has one writer anyway, and a writer that finds the database locked
        sleeps in SQLite's busy handler (1, 2, 5, 10 ... 100 ms steps): with 4 HL7
        connections that alone pushed the ACK p99 of a 3 KB message past 250 ms."""
        self._sessions = sessions
        self._max_attempts = max_attempts
        self._on_commit = on_commit or (lambda: None)
        if serialize is None:
            serialize = sessions.kw["bind"].dialect.name == "sqlite"
        self._write_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if serialize else contextlib.nullcontext())
        self.audit = Auditor(sessions, lock=self._write_lock)
        self._commit_error: str | None = None  # why the last commit failed; None after a success

    def storage_check(self) -> dict[str, Any]:
        """Readiness of the store: not ok while the last commit failed (e.g. a full disk), so a
        balancer stops sending. While failed, one probe commit (a ``storage_recovered`` event)
        asks whether writes work again: a quiet gateway must not stay unready for ever."""
        if self._commit_error is None:
            return {"ok": True}
        try:
            with self._write_lock, self._sessions.begin() as session:
                record_event(session, "storage_recovered", detail={"after": self._commit_error})
        except SQLAlchemyError:
            return {"ok": False, "error": f"last commit failed: {self._commit_error}"}
        log.info("storage_recovered", after=self._commit_error)
        self._commit_error = None
        return {"ok": True}

    def reject(self, source: str, peer: str | None, **detail: Any) -> None:
        """Audit a refused input (status/ACK code and reason; nothing of the message is kept)."""
        self.audit.record("rejected", peer=peer, detail={"source": source, **detail})

    def accept(self, msg: InboundMessage) -> IngestResult:
        """Store ``msg`` durably (or find its duplicate). Raises StoreUnavailableError."""
        digest = hashlib.sha256(msg.raw).hexdigest()
        started = time.perf_counter()
        try:
            with self._write_lock:
                result = self._insert(msg, digest)
        except IntegrityError:
            with self._write_lock:
                result = self._duplicate(msg, digest)
        except SQLAlchemyError as exc:
            log.error("store_failed", source=msg.source, error=type(exc).__name__)
            self._commit_error = type(exc).__name__
            raise StoreUnavailableError("database could not commit") from exc
        self._commit_error = None
        ECGS_RECEIVED.labels(source=msg.source, outcome=result.outcome.value).inc()
        if result.outcome is IngestOutcome.STORED:
            self._on_commit()
        log.info("ecg_ingested", source=msg.source, outcome=result.outcome.value,
                 message_id=result.message_id, ecg_uid=msg.ecg_uid, sha256=digest[:16],
                 commit_ms=round((time.perf_counter() - started) * 1000, 2))
        return result

    def _insert(self, msg: InboundMessage, digest: str) -> IngestResult:
        with self._sessions.begin() as session:
            # received_at from the database clock with milliseconds (SQLite's CURRENT_TIMESTAMP
            # default has whole seconds): the acute end-to-end latency is measured from it
            row = Message(source=msg.source, idempotency_key=msg.idempotency_key, sha256=digest,
                          content_type=msg.content_type, raw=msg.raw, peer=msg.peer,
                          ecg_uid=msg.ecg_uid, identifiers=msg.identifiers,
                          received_at=db_now(session.get_bind().dialect.name))
            session.add(row)
            session.flush()
            job = enqueue_triage(session, row.id, msg.priority, self._max_attempts)
            record_event(session, "received", message_id=row.id, job_id=job.id, peer=msg.peer,
                         detail={"source": msg.source, "ecg_uid": msg.ecg_uid, "sha256": digest, **msg.notes})
            return IngestResult(IngestOutcome.STORED, row.id)

    def _duplicate(self, msg: InboundMessage, digest: str) -> IngestResult:
        try:
            with self._sessions.begin() as session:
                existing = session.execute(
                    select(Message.id, Message.sha256).where(Message.idempotency_key == msg.idempotency_key)
                ).one()
                outcome = IngestOutcome.DUPLICATE if existing.sha256 == digest else IngestOutcome.CONFLICT
                record_event(session, f"received_{outcome.value}", message_id=existing.id, peer=msg.peer,
                             detail={"source": msg.source, "ecg_uid": msg.ecg_uid, "sha256": digest})
                return IngestResult(outcome, existing.id)
        except SQLAlchemyError as exc:
            self._commit_error = type(exc).__name__
            raise StoreUnavailableError("database could not commit") from exc
