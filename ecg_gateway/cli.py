"""Command line: ``ecg-gateway serve | db upgrade | status | check-config | triage | outbound``.

Every command returns an exit code (design.md): 0 ok, 1 crash, 2 usage, 69 a port or the
database unavailable, 78 bad config / database not at head / unusable checkpoint. Errors are
one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ecg_gateway import __version__
from ecg_gateway.config import Config, load_config
from ecg_gateway.errors import ConfigError

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 2, 69, 78

Command = Callable[[argparse.Namespace, Config], int]


class CliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ecg-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config file (env ECG_GATEWAY__SECTION__KEY overrides)")
        p.set_defaults(func=func)
        return p

    serve = add("serve", cmd_serve, "run the daemon")
    serve.add_argument("--role", choices=("all", "ingest", "worker", "sender"), default="all")
    db = add("db", cmd_db, "database schema")
    db.add_argument("action", choices=("upgrade", "current"))
    status = add("status", cmd_status, "queue counts per state")
    status.add_argument("--json", action="store_true")
    check = add("check-config", cmd_check_config, "validate the configuration and print it")
    check.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        from ecg_gateway.logs import configure_logging

        configure_logging(config.logging.level, config.logging.json_output)
        return int(args.func(args, config))
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> int:
    print(f"ecg-gateway: error: {message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.app import Gateway, StartupError

    try:
        return asyncio.run(Gateway(config, role=args.role).run())
    except StartupError as exc:
        raise CliError(str(exc), exc.exit_code) from exc


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ecg_gateway.store.db import current_revision, head_revision, make_engine, upgrade_to_head

    try:
        if args.action == "upgrade":
            upgrade_to_head(config.database.url)
        engine = make_engine(config.database.url)
        current = current_revision(engine)
        engine.dispose()
    except SQLAlchemyError as exc:
        raise CliError(f"database unavailable: {type(exc).__name__}", EX_UNAVAILABLE) from exc
    head = head_revision(config.database.url)
    print(f"database at revision {current} (head {head})")
    return EX_OK if args.action == "upgrade" or current == head else EX_CONFIG


def _sessions(config: Config) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from ecg_gateway.store.db import at_head, make_engine, make_session_factory

    engine = make_engine(config.database.url)
    try:
        if not at_head(engine):
            raise CliError("database is not at the migration head: run `ecg-gateway db upgrade`", EX_CONFIG)
    except SQLAlchemyError as exc:
        raise CliError(f"database unavailable: {type(exc).__name__}", EX_UNAVAILABLE) from exc
    return make_session_factory(engine)


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.store.stats import last_errors, last_model, status_counts

    with _sessions(config)() as session:
        report = status_counts(session)
        report["model"] = last_model(session)
        report["last_errors"] = last_errors(session)
    report["delivery"] = (f"{config.outbound.host}:{config.outbound.port}" if config.outbound.host
                          else "disabled: no outbound.host configured, results are kept, nothing is delivered")
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return EX_OK
    print(f"messages: {report['messages']}")
    for section in ("jobs", "results", "outbound"):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(report[section].items())) or "none"
        print(f"{section}: {counts}")
    model = report["model"]
    print(f"model: {model.get('model_id')} sha256={model.get('sha256', '')[:16]}" if model else "model: not loaded yet")
    print(f"delivery: {report['delivery']}")
    for err in report["last_errors"]:
        print(f"last error: job {err['job_id']} ({err['state']}): {err['error']}")
    return EX_OK


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    dumped = config.model_dump(mode="json")
    if dumped["http"].get("admin_token"):
        dumped["http"]["admin_token"] = "***"
    print(json.dumps(dumped, indent=None if args.json else 2, sort_keys=True))
    return EX_OK
