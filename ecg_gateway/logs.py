"""structlog set-up: JSON lines off a TTY, console on a TTY, PHI removed from every event.

What may carry PHI, and what happens to it (reliability.md §4, T14):

* our own events: keys naming patient data are keyed-hashed (``hmac:…``, a per-process
  random key: the same patient correlates within one run, nothing can be looked up), raw
  message keys are dropped;
* exceptions, ours or a library's: logged as type names and ``file:line in function`` frames
  only. Parser exceptions echo values (pydicom: ``Invalid value for VR DA: '…'``), and
  structlog's default dict tracebacks even print every frame's *local variables*;
* stdlib loggers and ``warnings`` (pydicom, pynetdicom, hl7apy, asyncio, torch ...): the text
  of a record is kept only for libraries that never see patient data (SQLAlchemy, Alembic,
  APScheduler); for the rest we keep the %-template when the record has arguments, otherwise
  a keyed hash of the text;
* uncaught exceptions in any thread go through the same path instead of stderr.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

#: Keys that may carry patient identifiers: their values are keyed-hashed.
PHI_KEYS = frozenset({
    "patient_name", "patient_id", "birth_date", "patient_birth_date", "identifiers",
    "demographics", "dob", "name", "family", "given", "mrn",
})
#: Keys that may carry raw clinical content: dropped.
RAW_KEYS = frozenset({"raw", "payload", "message_text", "dataset", "segment", "text"})
#: Library loggers that never see patient data: their text is kept.
TRUSTED_LOGGERS = ("sqlalchemy", "alembic", "apscheduler")
_KEY = secrets.token_bytes(32)
_MAX_FRAMES = 12


def keyed_hash(value: object) -> str:
    """``hmac:`` + 16 hex chars of HMAC-SHA256 under this process's random key."""
    return "hmac:" + hmac.new(_KEY, repr(value).encode(), hashlib.sha256).hexdigest()[:16]


def redact_phi(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Hash identifier keys, drop raw-content keys; they are stored in the database, never logged."""
    for key in PHI_KEYS.intersection(event):
        event[key] = keyed_hash(event[key]) if event[key] not in (None, "") else event[key]
    for key in RAW_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Type names and frame locations of an exception chain; never its message or locals."""
    chain: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(f"{type(current).__module__}.{type(current).__qualname__}")
        current = current.__cause__ or current.__context__
    frames = [f"{f.filename.rsplit('/site-packages/', 1)[-1]}:{f.lineno} in {f.name}"
              for f in traceback.extract_tb(exc.__traceback__)][-_MAX_FRAMES:]
    return {"type": chain[0], "chain": chain[1:], "frames": frames}


def scrub_exceptions(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace ``exc_info`` by :func:`describe_exception` (key ``exc``) before a renderer sees it."""
    exc_info = event.pop("exc_info", None)
    event.pop("stack_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
        if exc is not None:
            event["exc"] = describe_exception(exc)
    return event


_WARNING = re.compile(r"^(?P<where>.+?:\d+): (?P<category>\w+): ")


def scrub_foreign(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """Stdlib records from libraries that parse patient data: keep no free text."""
    record: logging.LogRecord | None = event.get("_record")
    args = event.pop("positional_args", None)
    if record is None or record.name.startswith(("ecg_gateway", *TRUSTED_LOGGERS)):
        return event
    text = str(event.get("event", ""))
    if record.name == "py.warnings":
        match = _WARNING.match(text.lstrip())
        event["event"] = "python_warning"
        event["category"] = match["category"] if match else None
        event["where"] = match["where"].rsplit("/site-packages/", 1)[-1] if match else None
    elif args:
        event["event"] = str(record.msg)  # the %-template is code, its arguments are data
    else:
        event["event"] = f"{record.name} message withheld"
    event["message_hmac"] = keyed_hash(text)
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
        scrub_exceptions,
        redact_phi,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if json_output
                     else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[scrub_foreign, *shared], pass_foreign_args=True,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn would print values straight to stderr
    logging.raiseExceptions = False  # a failing handler must not print the live traceback
    _install_excepthooks()
    _quiet_libraries()


def _install_excepthooks() -> None:
    """An uncaught exception must not print its message (and locals' reprs) to stderr."""
    uncaught = structlog.get_logger("ecg_gateway.uncaught")

    def on_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        uncaught.error("uncaught_exception", exc_info=exc.with_traceback(tb))

    def on_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            uncaught.error("uncaught_exception", thread=args.thread.name if args.thread else None,
                           exc_info=args.exc_value)

    sys.excepthook = on_uncaught
    threading.excepthook = on_thread


def _quiet_libraries() -> None:
    """pynetdicom logs dataset identifiers at INFO/DEBUG: keep it at WARNING, identifiers off.

    pydicom validates values as it reads and warns with the offending value; we validate
    every field we use ourselves (inbound/dicom.py), so its reading validation is off.
    """
    from pydicom import config as pydicom_config
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    for name in ("pynetdicom", "pydicom", "sqlalchemy", "alembic", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
