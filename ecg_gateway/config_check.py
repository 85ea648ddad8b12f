"""What the configuration refers to, checked before anything starts (issue #29 D5).

Pydantic validates values; this checks the things they name: TLS certificate, key and CA
files (loaded the way the listeners load them), the model file and the database URL's
driver. ``check-config`` and ``serve`` report every problem, each naming its key, and exit
78. A database that refuses the connection is explained with the driver's reason: 78 when
the URL is wrong (no such database or role, bad password), 69 when the server is down.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from ecg_gateway.config import Config
from ecg_gateway.errors import EX_CONFIG, EX_UNAVAILABLE, ConfigError
from ecg_gateway.security import client_context, server_context

#: Driver messages that mean the URL names something that does not exist or may not log in.
_WRONG_URL = ("does not exist", "authentication failed", "no password supplied", "not permitted to log in")


def check(config: Config, *, model: bool = True) -> None:
    """Raise ConfigError naming every problem (one line) if there is any. ``model=False`` for
    ``serve``: a missing model is not fatal there (ingest runs, readiness says degraded, T8)."""
    found = problems(config, model=model)
    if found:
        raise ConfigError("; ".join(f"invalid config key {line}" for line in found))


def problems(config: Config, *, model: bool = True) -> list[str]:
    """One line per problem, each starting with the key it concerns."""
    found = _tls_problems(config) + _database_problems(config.database.url)
    if model and config.model.path is not None:
        found += _file_problems("model.path", config.model.path)
    return found


def _file_problems(key: str, path: str) -> list[str]:
    if not Path(path).is_file():
        return [f"{key}: {path} is not a file"]
    if not os.access(path, os.R_OK):
        return [f"{key}: {path} is not readable by this user"]
    return []


def _tls_problems(config: Config) -> list[str]:
    found: list[str] = []
    for section in ("dicom", "hl7"):
        cfg = getattr(config, section)
        files = {f"{section}.tls_cert_file": cfg.tls_cert_file, f"{section}.tls_key_file": cfg.tls_key_file,
                 f"{section}.tls_client_ca_file": cfg.tls_client_ca_file}
        if not cfg.tls_cert_file and (cfg.tls_key_file or cfg.tls_client_ca_file):
            found.append(f"{section}.tls_cert_file: unset, yet other {section}.tls_* keys are set "
                         "(TLS would be off)")
        elif cfg.tls_cert_file:
            found += _context_problems(files, partial(server_context, cfg.tls_cert_file, cfg.tls_key_file,
                                                      cfg.tls_client_ca_file))
    out = config.outbound
    files = {"outbound.tls_ca_file": out.tls_ca_file, "outbound.tls_cert_file": out.tls_cert_file,
             "outbound.tls_key_file": out.tls_key_file}
    if out.tls_key_file and not out.tls_cert_file:
        found.append("outbound.tls_cert_file: unset, yet outbound.tls_key_file is set")
    elif out.tls:
        found += _context_problems(files, partial(client_context, out.tls_ca_file, out.tls_cert_file,
                                                  out.tls_key_file))
    return found


def _context_problems(files: dict[str, str | None], build: Callable[[], ssl.SSLContext]) -> list[str]:
    """Each named file must be readable; then the context must build (PEM content, key pair)."""
    found = [line for key, path in files.items() if path for line in _file_problems(key, path)]
    if found:
        return found
    try:
        build()
    except (ssl.SSLError, ValueError) as exc:
        keys = ", ".join(key for key, path in files.items() if path)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return [f"{keys}: the certificate, key or CA cannot be loaded ({reason})"]
    return []


def _database_problems(url: str) -> list[str]:
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:  # an ArgumentError too: first
        return [f"database.url: unknown database {url.split(':', 1)[0]!r}; use sqlite or postgresql+psycopg"]
    except ArgumentError:
        return ["database.url: not a database URL (e.g. sqlite:///ecg-gateway.db or postgresql+psycopg://…)"]
    except ImportError as exc:
        return [f"database.url: the driver for {parsed.drivername} is not installed ({exc.name}); "
                "use sqlite or postgresql+psycopg"]
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).resolve().parent
        if not folder.is_dir():
            return [f"database.url: the folder {folder} of the SQLite file does not exist"]
    return []


def database_failure(exc: SQLAlchemyError) -> tuple[str, int]:
    """A one-line reason for a failed connection and its exit code (78: fix database.url)."""
    driver_text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = driver_text.rsplit("failed: ", 1)[-1].replace("FATAL:  ", "").strip()[:200]
    code = EX_CONFIG if any(marker in reason for marker in _WRONG_URL) else EX_UNAVAILABLE
    where = "database.url: " if code == EX_CONFIG else ""
    return f"database unavailable: {where}{type(exc).__name__}: {reason or 'no reason given'}", code
