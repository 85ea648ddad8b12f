"""``ecg-gateway audit``: read and export the audit trail (the append-only ``events`` table).

``--json`` prints JSON lines (one event per line, with its DICOM PS3.15 A.5 reading under
``dicom``), ready for a SIEM or an ATNA bridge. Reading the trail is itself audited
(``audit_log_used``, 110101), as PS3.15 asks.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ecg_gateway.cli_common import Subparsers, add_command, db_errors, open_sessions
from ecg_gateway.config import Config
from ecg_gateway.errors import EX_OK, EX_USAGE, CliError


def register(sub: Subparsers) -> None:
    """Add the ``audit`` command to the CLI's subparsers (cli.py calls this)."""
    audit = add_command(sub, "audit", cmd_audit, "audit trail: query, or export as JSON lines")
    audit.add_argument("--since", help="only events at or after this ISO 8601 time (UTC if no zone)")
    audit.add_argument("--until", help="only events before this ISO 8601 time")
    audit.add_argument("--kind", action="append", metavar="K",
                       help="only this kind (repeatable), e.g. received, rejected, security_alert")
    audit.add_argument("--limit", type=int, metavar="N", help="only the newest N events")
    audit.add_argument("--json", action="store_true", help="JSON lines with the PS3.15 mapping")
    audit.add_argument("--codes", action="store_true", help="print the kind -> PS3.15 event code table")


@db_errors
def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    from ecg_gateway.audit import (
        DICOM_AUDIT,
        export,
        local_actor,
        parse_time,
        query_events,
        record_event,
    )

    if args.codes:
        for kind, mapping in sorted(DICOM_AUDIT.items()):
            event_type = f" / {mapping.event_type.value} {mapping.event_type.meaning}" if mapping.event_type else ""
            print(f"{kind:<20} {mapping.event_id.value} {mapping.event_id.meaning}{event_type} "
                  f"action={mapping.action} outcome={mapping.outcome}")
        return EX_OK
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise CliError(f"--since/--until: not an ISO 8601 time: {exc}", EX_USAGE) from exc
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be positive", EX_USAGE)
    sessions = open_sessions(config)
    with sessions() as session:
        rows = [export(e) for e in query_events(session, since=since, until=until, kinds=args.kind,
                                                limit=args.limit)]
    with sessions.begin() as session:
        record_event(session, "audit_log_used", actor=local_actor(), peer="local",
                     detail={"since": args.since, "until": args.until, "kinds": args.kind,
                             "returned": len(rows)})
    out = sys.stdout
    for row in rows:
        out.write(json.dumps(row, sort_keys=True, default=str) + "\n" if args.json else _line(row) + "\n")
    if not args.json:
        print(f"{len(rows)} event(s)")
    return EX_OK


def _line(row: dict[str, Any]) -> str:
    code = row["dicom"]["EventID"]["code"] if row["dicom"] else "-"
    refs = " ".join(f"{k}={row[k]}" for k in ("message_id", "job_id", "outbound_id") if row[k] is not None)
    who = " ".join(f"{k}={row[k]}" for k in ("actor", "peer") if row[k])
    detail = json.dumps(row["detail"], sort_keys=True, default=str)
    return f"{row['id']:>7} {row['at']} {row['kind']:<18} {code:<6} {refs} {who} {detail}".replace("  ", " ")
