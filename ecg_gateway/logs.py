"""structlog set-up: JSON lines off a TTY, console on a TTY, PHI removed from every event.

Stdlib loggers (pynetdicom, SQLAlchemy, APScheduler, alembic) are routed through the same
processors so their output is JSON too and passes the PHI filter.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

#: Keys that may carry patient identifiers or raw clinical content: never emitted.
PHI_KEYS = frozenset({
    "patient_name", "patient_id", "birth_date", "patient_birth_date", "identifiers",
    "demographics", "raw", "payload", "message_text", "dob",
})


def redact_phi(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop PHI-bearing keys; they are stored in the database, never logged."""
    for key in PHI_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", json_output: bool | None = None, stream: TextIO | None = None) -> None:
    """Daemon logs go to stdout (the journal); CLI commands pass stderr so stdout stays data."""
    stream = stream or sys.stdout
    if json_output is None:
        json_output = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_phi,
    ]
    renderer: Any
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _quiet_libraries()


def _quiet_libraries() -> None:
    """pynetdicom logs dataset identifiers at INFO/DEBUG: keep it at WARNING, identifiers off."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    for name in ("pynetdicom", "sqlalchemy", "alembic", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
