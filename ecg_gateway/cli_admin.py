"""Admin commands: ``jobs list|requeue``, ``replay``, ``purge``, ``send-dicom``, ``send-hl7``.

Registered into the main parser by :func:`register`. Same conventions as cli.py: ``--json``
for machines, one-line errors, exit codes 0 ok · 2 usage · 65 bad input (unknown id, row in
the wrong state, unreadable file, refused by the peer) · 69 peer or database unavailable ·
78 config / database not at head. ``send-*`` are test peers for installers: they talk to a
running gateway (ports from ``--config`` or ``--host/--port``) and need no database.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ecg_gateway.cli import (
    EX_DATAERR,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    CliError,
    Command,
    _sessions,
)
from ecg_gateway.config import Config

AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: Any, add: AddCommand) -> None:
    """Add the admin commands to the ``ecg-gateway`` parser (``add`` is cli.py's helper)."""
    jobs = add("jobs", cmd_jobs, "triage jobs: list, or requeue dead ones")
    jobs.add_argument("action", choices=("list", "requeue"))
    jobs.add_argument("ids", nargs="*", type=int, metavar="ID")
    jobs.add_argument("--state", help="list: only jobs in this state (queued, running, done, dead)")
    jobs.add_argument("--dead", action="store_true", help="requeue: every dead job")
    jobs.add_argument("--json", action="store_true")
    replay = add("replay", cmd_replay, "re-triage stored messages with the current model "
                 "(a new job and result per message; old results are kept)")
    replay.add_argument("message_ids", nargs="+", type=int, metavar="MESSAGE_ID")
    replay.add_argument("--json", action="store_true")
    purge = add("purge", cmd_purge, "delete finished messages (raw bytes, jobs, results, ORUs) "
                "older than DURATION; events are kept")
    purge.add_argument("--older-than", required=True, type=parse_duration, metavar="DURATION",
                       help="e.g. 30d, 12h, 90m; a bare number is days")
    purge.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    purge.add_argument("--json", action="store_true")
    dicom = add("send-dicom", cmd_send_dicom, "send a DICOM file by C-STORE and print the status")
    dicom.add_argument("file", metavar="FILE")
    dicom.add_argument("--host", help="default: dicom.host of the config")
    dicom.add_argument("--port", type=int, help="default: dicom.port of the config")
    dicom.add_argument("--aet", default="ECGGW_TEST", help="our (calling) AE title")
    dicom.add_argument("--called-aet", help="default: dicom.ae_title of the config")
    dicom.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    dicom.add_argument("--json", action="store_true")
    hl7 = add("send-hl7", cmd_send_hl7, "send HL7 v2 files over MLLP (one connection) and print "
              "each ACK's MSA")
    hl7.add_argument("files", nargs="+", metavar="FILE")
    hl7.add_argument("--wrap", action="store_true",
                     help="FILE is an ECG document (DICOM, aECG, MUSE, SierraECG, SCP-ECG): send it "
                          "as the ED OBX of an ORU^R01 with the patient fields it holds")
    hl7.add_argument("--host", help="default: hl7.host of the config")
    hl7.add_argument("--port", type=int, help="default: hl7.port of the config")
    hl7.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    hl7.add_argument("--json", action="store_true")


def parse_duration(text: str) -> float:
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` / ``30`` (days) -> seconds (> 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 30d, 12h, 90m")
    return float(match.group(1)) * _UNITS[match.group(2) or "d"]


def _db_errors(func: Command) -> Command:
    """A database that goes away mid-command is a one-line error and exit 69, not a trace."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace, config: Config) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return func(args, config)
        except SQLAlchemyError as exc:
            raise CliError(f"database unavailable: {type(exc).__name__}", EX_UNAVAILABLE) from exc
    return wrapper


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, sort_keys=True, default=str) if args.json else text)


# --- queue actions ----------------------------------------------------------------------

@_db_errors
def cmd_jobs(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.store.admin import AdminError, list_jobs, requeue_jobs

    if args.action == "requeue" and not args.ids and not args.dead:
        raise CliError("jobs requeue needs IDs or --dead", EX_USAGE)
    sessions = _sessions(config)
    if args.action == "list":
        try:
            rows = list_jobs(sessions, args.state)
        except ValueError as exc:
            raise CliError(str(exc), EX_USAGE) from exc
        lines = [f"{r['id']:>6} message={r['message_id']:<6} {r['state']:<7} "
                 f"attempts={r['attempts']}/{r['max_attempts']} {r['last_error'] or ''}".rstrip()
                 for r in rows]
        _print(args, rows, "\n".join([*lines, f"{len(rows)} job(s)"]))
        return EX_OK
    try:
        count = requeue_jobs(sessions, args.ids or None, actor="cli")
    except AdminError as exc:
        raise CliError(str(exc), EX_DATAERR) from exc
    _print(args, {"requeued": count}, f"requeued {count} job(s)")
    return EX_OK


@_db_errors
def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.store.admin import AdminError, replay

    try:
        created = replay(_sessions(config), args.message_ids,
                         max_attempts=config.worker.max_attempts, actor="cli")
    except AdminError as exc:
        raise CliError(str(exc), EX_DATAERR) from exc
    lines = [f"message {c['message_id']}: new triage job {c['job_id']}" for c in created]
    _print(args, {"replayed": created}, "\n".join(lines))
    return EX_OK


@_db_errors
def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.store.admin import purge

    report = purge(_sessions(config), args.older_than, actor="cli", dry_run=args.dry_run)
    verb = "would delete" if report.dry_run else "deleted"
    _print(args, report.to_json(), f"{verb} {report.messages} message(s), {report.jobs} job(s), "
           f"{report.results} result(s), {report.outbound} outbound row(s)")
    return EX_OK


# --- test peers ---------------------------------------------------------------------------

def cmd_send_dicom(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.dicom_peer import PeerError, quiet_dicom_libraries, send_dicom_file

    quiet_dicom_libraries()  # their warnings would bury the one line that matters
    host, port = args.host or config.dicom.host, args.port or config.dicom.port
    called = args.called_aet or config.dicom.ae_title
    try:
        answer = send_dicom_file(Path(args.file), host, port, calling=args.aet, called=called,
                                 timeout_s=args.timeout)
    except PeerError as exc:
        raise CliError(f"{args.file}: {exc}", exc.exit_code) from exc
    comment = f" ({answer['error_comment']})" if answer.get("error_comment") else ""
    line = (f"C-STORE to {called}@{host}:{port}: status {answer['status']} "
            f"{answer['category']}{comment}")
    if answer["category"] in ("Success", "Warning"):
        _print(args, answer, line)
        return EX_OK
    retry_later = answer["status"].startswith("0xA7")  # out of resources: the gateway's DB
    _fail_with(args, answer, line, EX_UNAVAILABLE if retry_later else EX_DATAERR)


def cmd_send_hl7(args: argparse.Namespace, config: Config) -> int:
    """Send each file in turn; an unreadable file or a refusal costs that file (exit 65 at the
    end), a gateway that cannot be reached stops the run (69)."""
    from ecg_gateway.mllp import MllpClient, MllpError

    host, port = args.host or config.hl7.host, args.port or config.hl7.port
    answers: list[dict[str, Any]] = [{"file": name} for name in args.files]
    payloads: list[tuple[dict[str, Any], bytes]] = []
    for answer in answers:
        try:
            payloads.append((answer, _wrap(answer["file"]) if args.wrap else _read_hl7(answer["file"])))
        except CliError as exc:
            answer["error"] = str(exc)  # the message names the file

    async def send() -> list[bytes]:
        async with MllpClient(host, port, connect_timeout_s=args.timeout,
                              ack_timeout_s=args.timeout) as client:
            return [await client.send(payload) for _, payload in payloads]

    try:
        acks = asyncio.run(send()) if payloads else []
    except (MllpError, OSError) as exc:
        raise CliError(f"{host}:{port}: {exc}", EX_UNAVAILABLE) from exc
    for (answer, _), ack in zip(payloads, acks, strict=True):
        msa = parse_ack(ack)
        if msa is None:
            raise CliError(f"{host}:{port}: the answer to {answer['file']} has no MSA segment",
                           EX_UNAVAILABLE)
        answer.update(msa)
    return _report_sends(args, answers, f"{host}:{port}")


def _report_sends(args: argparse.Namespace, answers: list[dict[str, Any]], peer: str) -> int:
    """One line (or JSON object) per file; the exit code of the worst outcome."""
    code = EX_OK
    for answer in answers:
        prefix = f"{answer['file']}: " if len(args.files) > 1 else ""
        if "error" in answer:
            prefix, line, failed = "", answer["error"], EX_DATAERR
        else:
            err = f" ERR {answer['error_code']}" if answer["error_code"] else ""
            line = f"{answer['msa']}{err}"
            failed = EX_OK if answer["code"] in ("AA", "CA") else (
                EX_UNAVAILABLE if answer["error_code"] == "207" else EX_DATAERR)
            if failed:
                line = f"{peer} answered {line}"
        if failed:
            print(f"ecg-gateway: error: {prefix}{line}", file=sys.stderr)
            code = max(code, failed)
        elif not args.json:
            print(f"{prefix}{line}")
    if args.json:
        print(json.dumps(answers[0] if len(answers) == 1 else answers, sort_keys=True))
    return code


def _wrap(name: str) -> bytes:
    from ecg_gateway.errors import GatewayError
    from ecg_gateway.inbound.wrap import wrap_ecg_file

    try:
        return wrap_ecg_file(Path(name))
    except OSError as exc:
        raise CliError(f"{name}: cannot read: {exc.strerror}", EX_DATAERR) from exc
    except GatewayError as exc:
        raise CliError(f"{name}: {exc}", EX_DATAERR) from exc


def _fail_with(args: argparse.Namespace, answer: dict[str, Any], line: str, code: int) -> NoReturn:
    """A refusal: the answer as JSON on stdout (with --json), the one-line error on stderr."""
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    raise CliError(line, code)


def _read_hl7(name: str) -> bytes:
    """The file with line ends as HL7 segment separators (editors save \\n or \\r\\n)."""
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise CliError(f"{name}: cannot read: {exc.strerror}", EX_DATAERR) from exc
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")
    if not data.startswith(b"MSH"):
        raise CliError(f"{name}: not an HL7 v2 message (must start with MSH)", EX_DATAERR)
    return data + b"\r"


def parse_ack(ack: bytes) -> dict[str, str] | None:
    """MSA code, control id and text, and ERR-3's code: what an installer needs to see."""
    text = ack.decode("utf-8", "replace")
    sep = text[3:4] or "|"
    segments = {s[:3]: s.split(sep) for s in reversed(re.split(r"[\r\n]+", text)) if s[:3]}
    msa = segments.get("MSA")
    if msa is None:
        return None
    err = segments.get("ERR")
    error_code = err[3].split(text[4:5] or "^")[0] if err and len(err) > 3 else ""
    return {"msa": sep.join(msa), "code": msa[1] if len(msa) > 1 else "",
            "control_id": msa[2] if len(msa) > 2 else "", "text": msa[3] if len(msa) > 3 else "",
            "error_code": error_code}
