"""SQLAlchemy 2 typed models: the database is the only channel between stages.

The same schema runs on SQLite (embedded default) and PostgreSQL (production).
Schema changes go through Alembic migrations in ``migrations/``; ``create_all`` is
for tests only.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    event,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BigInteger ids on PostgreSQL; SQLite needs plain INTEGER for rowid aliasing.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class OutboundState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Message(Base):
    """One accepted inbound ECG message, raw bytes as received (the idempotency anchor)."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # dicom | hl7
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    peer: Mapped[str | None] = mapped_column(String(255))
    ecg_uid: Mapped[str | None] = mapped_column(String(255))
    # PHI: kept to file the result on the right order; never logged.
    identifiers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LeasedMixin:
    """Columns shared by every claimable row (jobs and outbound messages)."""

    priority: Mapped[int] = mapped_column(Integer, default=100)  # lower runs first
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Job(LeasedMixin, Base):
    """Work for the triage worker: one per accepted message."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "priority", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="triage")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)


class Result(Base):
    """A triage result, written in the same transaction that completes its job."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    category: Mapped[str] = mapped_column(String(32), index=True)
    p_normal: Mapped[float | None] = mapped_column(Float)
    p_abnormal_not_acute: Mapped[float | None] = mapped_column(Float)
    p_subacute: Mapped[float | None] = mapped_column(Float)
    p_acute: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[str] = mapped_column(String(128))
    model_sha256: Mapped[str] = mapped_column(String(64))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # evidence (ecg_gateway/evidence.py): [{code, description, probability}], {name: value},
    # {rule, text, threshold, flag_budget}; NULL in rows written before migration 0003
    statements: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    measurements: Mapped[dict[str, float] | None] = mapped_column(JSON)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # what the ORU needs from the decoded ECG (migration 0005), so the sender never decodes the
    # raw message: the acquisition time as the cart gave it (ISO 8601, its offset if it gave
    # one) and, when a PDF is to be attached, the waveform (ecg.pack_tracing). NULL when the
    # ECG has none, and in rows whose ORU was composed before 0005.
    acquired_at: Mapped[str | None] = mapped_column(String(40))
    tracing: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboundKind(str, enum.Enum):
    RESULT = "result"  # the first ORU of a result
    CORRECTION = "correction"  # OBR-25 C: the same result with the PDF that was late


class Outbound(LeasedMixin, Base):
    """An ORU^R01 to deliver; its MSH-10 control id is fixed when the row is created."""

    __tablename__ = "outbound"
    __table_args__ = (Index("ix_outbound_claim", "state", "priority", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=OutboundKind.RESULT.value,
                                      server_default=OutboundKind.RESULT.value)
    control_id: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=OutboundState.PENDING.value)
    destination: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """Append-only event log (the audit trail): every transition and every refusal, without PHI.

    The database refuses UPDATE and DELETE on it (triggers, migration 0002); ``audit.py``
    maps kinds to DICOM PS3.15 A.5 audit messages.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    message_id: Mapped[int | None] = mapped_column(Id)
    job_id: Mapped[int | None] = mapped_column(Id)
    outbound_id: Mapped[int | None] = mapped_column(Id)
    actor: Mapped[str | None] = mapped_column(String(128))
    peer: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# The audit trail is append-only in the database itself (migration 0002); the same triggers
# for schemas made with ``create_all`` in tests. A retention purge must drop them on purpose.
for _statement in (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
):
    event.listen(Event.__table__, "after_create", DDL(_statement).execute_if(dialect="sqlite"))
for _statement in (
    "CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$",
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events "
    "FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()",
):
    event.listen(Event.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql"))
