"""Command line: ``ecg-gateway serve | db upgrade | status | check-config | triage | outbound | audit``.

Every command returns an exit code (design.md): 0 ok, 1 crash, 2 usage, 69 a port or the
database unavailable, 78 bad config / database not at head / unusable checkpoint. Errors are
one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ecg_gateway import __version__, cli_admin, cli_audit
from ecg_gateway.cli_common import add_command, open_sessions
from ecg_gateway.config import Config, load_config
from ecg_gateway.errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    CliError,
    ConfigError,
    StartupError,
)

if TYPE_CHECKING:
    from ecg_gateway.ecg import Ecg

__all__ = ["EX_CONFIG", "EX_DATAERR", "EX_OK", "EX_UNAVAILABLE", "EX_USAGE", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ecg-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = add_command(sub, "serve", cmd_serve, "run the daemon")
    serve.add_argument("--role", choices=("all", "ingest", "worker", "sender"), default="all")
    db = add_command(sub, "db", cmd_db, "database schema")
    db.add_argument("action", choices=("upgrade", "current"))
    status = add_command(sub, "status", cmd_status, "queue counts per state")
    status.add_argument("--json", action="store_true")
    check = add_command(sub, "check-config", cmd_check_config, "validate the configuration and print it")
    check.add_argument("--json", action="store_true")
    triage = add_command(sub, "triage", cmd_triage, "triage ECG files (DICOM, HL7, aECG, MUSE XML, "
                         "Philips SierraECG XML, SCP-ECG, WFDB .hea) without the daemon")
    triage.add_argument("files", nargs="+", metavar="FILE")
    triage.add_argument("--json", action="store_true")
    outbound = add_command(sub, "outbound", cmd_outbound, "ORU deliveries: list, or retry now")
    outbound.add_argument("action", choices=("list", "retry"))
    outbound.add_argument("ids", nargs="*", type=int, metavar="ID")
    outbound.add_argument("--state", help="list: only rows in this state (pending, sending, delivered, dead)")
    outbound.add_argument("--dead", action="store_true", help="retry: every dead row")
    outbound.add_argument("--json", action="store_true")
    cli_admin.register(sub)  # jobs, replay, purge, send-dicom, send-hl7
    cli_audit.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        from ecg_gateway.logs import configure_logging

        configure_logging(config.logging.level, config.logging.json_output,
                          stream=sys.stdout if args.command == "serve" else sys.stderr)
        return int(args.func(args, config))
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # the shell's code for a command ended by Ctrl-C


def _fail(message: str, code: int) -> int:
    print(f"ecg-gateway: error: {message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.app import Gateway

    gateway = Gateway(config, role=args.role)
    try:
        code = asyncio.run(gateway.run())
    except StartupError as exc:
        code = _fail(str(exc), exc.exit_code)
    gateway.exit_if_threads_linger(code)  # never finalize while torch runs in a thread
    return code


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ecg_gateway.config_check import database_failure
    from ecg_gateway.store.db import current_revision, head_revision, make_engine, upgrade_to_head

    try:
        if args.action == "upgrade":
            upgrade_to_head(config.database.url)
        engine = make_engine(config.database.url)
        current = current_revision(engine)
        engine.dispose()
    except SQLAlchemyError as exc:
        raise CliError(*database_failure(exc)) from exc
    head = head_revision(config.database.url)
    print(f"database at revision {current} (head {head})")
    return EX_OK if args.action == "upgrade" or current == head else EX_CONFIG


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.store.overview import destinations, last_delivery_errors
    from ecg_gateway.store.stats import last_errors, last_model, status_counts

    with open_sessions(config)() as session:
        report = status_counts(session)
        report["model"] = last_model(session)
        report["last_errors"] = last_errors(session)
        report["destinations"] = destinations(session)
        report["last_delivery_errors"] = last_delivery_errors(session)
    report["delivery"] = (f"{config.outbound.host}:{config.outbound.port}" if config.outbound.host
                          else "disabled: no outbound.host configured, results are kept, nothing is delivered")
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return EX_OK
    print(f"messages: {report['messages']}")
    for section in ("jobs", "results", "outbound"):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(report[section].items())) or "none"
        print(f"{section}: {counts}")
    print(_model_line(report["model"], config))
    print(f"delivery: {report['delivery']}")
    for dest, counts in sorted(report["destinations"].items()):
        print(f"destination {dest}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for err in report["last_errors"]:
        print(f"last error: job {err['job_id']} ({err['state']}): {err['error']}")
    for err in report["last_delivery_errors"]:
        print(f"last delivery error: outbound {err['outbound_id']} ({err['state']}, "
              f"{err['attempts']} attempts): {err['error']}")
    return EX_OK


def _model_line(model: dict[str, Any] | None, config: Config) -> str:
    """The model the worker loaded (its last ``model_loaded`` event), or the configured file's."""
    if not model:
        from ecg_gateway.triage.model import checkpoint_summary

        return f"model: not loaded yet; configured: {checkpoint_summary(config.model.path)}"
    acute = (model.get("thresholds") or {}).get("acute")
    budget = model.get("acute_flag_budget")
    rule = "" if acute is None else f" acute>={acute:.4g}" + (f" ({budget:.0%} flag budget)" if budget else "")
    extra = f", {model['members']} member(s), {model.get('statements', 0)} statements" if "members" in model else ""
    return f"model: {model.get('model_id')} sha256={model.get('sha256', '')[:16]}{rule}{extra}"


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    """Validate the values and what they name (files, model, database driver); print the config."""
    from ecg_gateway.config import redacted_dump
    from ecg_gateway.config_check import check

    check(config)
    dumped = redacted_dump(config)
    print(json.dumps(dumped, indent=None if args.json else 2, sort_keys=True))
    return EX_OK


def cmd_triage(args: argparse.Namespace, config: Config) -> int:
    """Triage the files in batches. A file that cannot be read or decoded does not stop the
    run: it gets ``{"file", "error"}`` (or an error line) and the exit code is 65 at the end."""
    from ecg_gateway.errors import CheckpointError
    from ecg_gateway.triage.model import cpu_threads, load_model, set_operating_point
    from ecg_gateway.triage.service import Triager

    try:
        cores = cpu_threads(config.model.cpu_threads, shares_process=False)
        model = set_operating_point(load_model(config.model.path, device=config.model.device,
                                                    cpu_precision=config.model.cpu_precision, cpu_cores=cores),
                                    config.model.acute_flag_budget, config.model.acute_threshold)
    except CheckpointError as exc:
        raise CliError(str(exc), EX_CONFIG) from exc
    triager, size = Triager(model), config.model.batch_size
    objects: list[dict[str, Any]] = []
    for start in range(0, len(args.files), size):
        decoded = [(name, _decode_or_error(name)) for name in args.files[start:start + size]]
        outcomes = iter(triager.triage([item for _, item in decoded if not isinstance(item, str)]))
        for name, item in decoded:
            objects.append({"file": name, "error": item} if isinstance(item, str)
                           else {"file": name, **next(outcomes).to_json()})
            if not args.json:
                _print_triage_line(objects[-1])
    if args.json:
        print(json.dumps(objects[0] if len(objects) == 1 else objects, sort_keys=True))
    else:
        print(f"model: {model.model_id} sha256={model.sha256[:16]}{' (PLACEHOLDER)' if model.placeholder else ''}")
    return EX_DATAERR if any("error" in obj for obj in objects) else EX_OK


def _decode_or_error(name: str) -> Ecg | str:
    """The file's Ecg, or a one-line reason naming the format found (never the file's data)."""
    from ecg_gateway.errors import GatewayError
    from ecg_gateway.inbound.decode import decode_file

    try:
        return decode_file(name)
    except OSError as exc:
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    except GatewayError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder bug costs this file, not the run
        return f"decoder failed ({type(exc).__name__})"


def _print_triage_line(obj: dict[str, Any]) -> None:
    if "error" in obj:
        print(f"ecg-gateway: error: {obj['file']}: {obj['error']}", file=sys.stderr)
        return
    probs = " ".join(f"{k}={v:.3f}" for k, v in (obj["probabilities"] or {}).items())
    reasons = obj["quality"]["reasons"]
    print(f"{obj['file']}: {obj['category']} {probs}{' reasons=' + ','.join(reasons) if reasons else ''}")


def cmd_outbound(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.errors import AdminError
    from ecg_gateway.outbound.admin import list_outbound
    from ecg_gateway.store.queue import retry_outbound

    sessions = open_sessions(config)
    if args.action == "list":
        try:
            rows = list_outbound(sessions, args.state)
        except ValueError as exc:
            raise CliError(str(exc), EX_USAGE) from exc
        if args.json:
            print(json.dumps(rows, default=str, sort_keys=True))
            return EX_OK
        for row in rows:
            error = f"last error: {row['last_error']}" if row["last_error"] else ""
            print(f"{row['id']:>6} {row['control_id']} {row['kind']:<10} {row['state']:<9} "
                  f"{row['category'] or '':<18} attempts={row['attempts']}/{row['max_attempts']} "
                  f"{error}".rstrip())
        print(f"{len(rows)} row(s)")
        return EX_OK
    if not args.ids and not args.dead:
        raise CliError("outbound retry needs IDs or --dead", EX_USAGE)
    from ecg_gateway.audit import local_actor

    try:
        changed = retry_outbound(sessions, args.ids or None, dead=args.dead, actor=f"cli:{local_actor()}")
    except AdminError as exc:
        raise CliError(str(exc), EX_DATAERR) from exc
    print(json.dumps({"requeued": changed}) if args.json else f"requeued {changed} row(s)")
    return EX_OK
