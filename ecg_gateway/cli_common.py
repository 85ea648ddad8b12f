"""What every ``ecg-gateway`` command module shares: the subcommand helper and the database.

cli.py builds the parser and calls each module's ``register(sub)``; the command modules
(cli_admin.py, cli_audit.py) import this one, never cli.py, so the imports run one way.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ecg_gateway.config import Config
from ecg_gateway.errors import EX_CONFIG, EX_UNAVAILABLE, CliError

if TYPE_CHECKING:  # SQLAlchemy is imported by the commands that use it (`--help` stays quick)
    from sqlalchemy.orm import Session, sessionmaker

Command = Callable[[argparse.Namespace, Config], int]
Subparsers = Any  # argparse's _SubParsersAction, private in typeshed


def add_command(sub: Subparsers, name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
    """A subcommand with ``--config``; ``main`` loads the config and calls ``func(args, config)``."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--config", help="YAML config file (env ECG_GATEWAY__SECTION__KEY overrides)")
    parser.set_defaults(func=func)
    return parser


def open_sessions(config: Config) -> sessionmaker[Session]:
    """Sessions on the configured database, which must be at the migration head (else 78;
    unreachable: 69, or 78 when the URL names something that does not exist)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ecg_gateway.config_check import database_failure
    from ecg_gateway.store.db import at_head, make_engine, make_session_factory

    engine = make_engine(config.database.url)
    try:
        if not at_head(engine):
            raise CliError("database is not at the migration head: run `ecg-gateway db upgrade`", EX_CONFIG)
    except SQLAlchemyError as exc:
        raise CliError(*database_failure(exc)) from exc
    return make_session_factory(engine)


def db_errors(func: Command) -> Command:
    """A database that goes away mid-command is a one-line error and exit 69, not a trace."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace, config: Config) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return func(args, config)
        except SQLAlchemyError as exc:
            raise CliError(f"database unavailable: {type(exc).__name__}", EX_UNAVAILABLE) from exc
    return wrapper
