"""The audit trail: append-only in the database, the background writer, query/export, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from ecg_gateway.audit import DICOM_AUDIT, Auditor, export, parse_time, query_events, record_event
from ecg_gateway.config import Hl7Config
from ecg_gateway.inbound.hl7_receiver import Hl7Receiver, start_hl7_listener
from ecg_gateway.mllp import MllpClient
from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.ingest import Ingestor
from ecg_gateway.store.models import Event
from tests.support.gateway import run_cli, write_config


def test_events_are_append_only_in_the_database(sessions, db_url: str) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        record_event(s, "received", message_id=1, peer="CART1", detail={"sha256": "ab"})
    for statement in (update(Event).values(kind="tampered"), delete(Event)):
        with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as s:
            s.execute(statement)
    if db_url.startswith("postgresql"):
        with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as s:
            s.execute(text("TRUNCATE events"))
    with sessions() as s:
        assert [(e.kind, e.detail) for e in s.scalars(select(Event))] == [("received", {"sha256": "ab"})]


def test_alerts_are_rate_limited_per_address_and_flushed(sessions) -> None:  # type: ignore[no-untyped-def]
    auditor = Auditor(sessions, alert_interval_s=60)
    for _ in range(50):
        auditor.alert("TLS handshake failed", "10.0.0.9", protocol="dicom")
    auditor.alert("TLS handshake failed", "CART@10.0.0.8:4000", protocol="dicom")
    auditor.alert("calling AE title not allowed", "X@10.0.0.9:1234", protocol="dicom")
    auditor.record("app_start", actor="ops@host", detail={"role": "all"})
    assert auditor.flush(10)
    with sessions() as s:
        rows = [(e.kind, e.peer, e.detail.get("reason")) for e in s.scalars(select(Event).order_by(Event.id))]
    assert rows == [("security_alert", "10.0.0.9", "TLS handshake failed"),
                    ("security_alert", "CART@10.0.0.8:4000", "TLS handshake failed"),
                    ("security_alert", "X@10.0.0.9:1234", "calling AE title not allowed"),
                    ("app_start", None, None)]
    auditor.alert("TLS handshake failed", "10.0.0.9", protocol="dicom")  # still suppressed
    assert auditor.flush(10) and auditor.dropped == 0


async def test_rejected_hl7_is_audited_without_storing_the_message(sqlite_url: str) -> None:
    upgrade_to_head(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    ingestor = Ingestor(sessions)
    server = await start_hl7_listener(Hl7Receiver(ingestor), Hl7Config(port=0))
    bad = b"MSH|^~\\&|CART|WARD1|ECGGW|HOSP|20250101||ADT^A01|REJ-1|P|2.5.1\rPID|1||ZZSECRET^^^HOSP^MR\r"
    async with server, MllpClient("127.0.0.1", server.sockets[0].getsockname()[1]) as client:
        assert b"MSA|AR|REJ-1" in await client.send(bad)
        assert b"MSA|AR" in await client.send(b"not hl7 at all ZZSECRET")
    assert ingestor.audit.flush(10)
    with sessions() as s:
        events = [export(e) for e in s.scalars(select(Event))]
        assert s.execute(text("SELECT count(*) FROM messages")).scalar() == 0
    engine.dispose()
    assert [(e["kind"], e["detail"]["ack"], e["detail"]["err"]) for e in events] == [
        ("rejected", "AR", 200), ("rejected", "AR", 100)]
    assert events[0]["detail"]["control_id"] == "REJ-1" and events[0]["peer"].startswith("127.0.0.1:")
    assert events[0]["dicom"]["EventID"]["code"] == "110104" and events[0]["dicom"]["EventOutcomeIndicator"] == 4
    assert "ZZSECRET" not in json.dumps(events)


def test_query_filters_by_time_kind_and_limit(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        for kind in ("received", "triaged", "delivered", "received"):
            record_event(s, kind, detail={})
    with sessions() as s:
        everything = query_events(s)
        assert [e.kind for e in everything] == ["received", "triaged", "delivered", "received"]
        assert [e.kind for e in query_events(s, kinds=["received"])] == ["received", "received"]
        assert [e.kind for e in query_events(s, limit=2)] == ["delivered", "received"]
        now = datetime.now(UTC)
        assert len(query_events(s, since=now - timedelta(minutes=5))) == 4
        assert query_events(s, since=now + timedelta(minutes=5)) == []
        assert len(query_events(s, until=now + timedelta(minutes=5))) == 4
        exported = export(everything[2])
    assert exported["dicom"] == {"EventID": {"code": "110106", "scheme": "DCM", "meaning": "Export"},
                                 "EventActionCode": "R", "EventOutcomeIndicator": 0}
    assert datetime.fromisoformat(exported["at"]).tzinfo is not None
    assert parse_time("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)


def test_every_kind_the_gateway_writes_has_a_ps315_reading() -> None:
    written = {"app_start", "app_stop", "config_loaded", "model_loaded", "received", "received_duplicate",
               "received_conflict", "rejected", "triaged", "triage_failed", "delivered", "send_failed", "dead",
               "security_alert", "audit_log_used", "admin_jobs_requeue",
               "admin_outbound_requeue", "admin_replay", "admin_purge", "admin_denied"}
    assert written <= set(DICOM_AUDIT)
    assert {m.event_id.value for m in DICOM_AUDIT.values()} == {
        "110100", "110101", "110103", "110104", "110105", "110106", "110113", "110114"}


def _audit(config: Path, capsys, *argv: str) -> str:  # type: ignore[no-untyped-def]
    """The command in-process (the CLI's parser and command; logging left as pytest has it)."""
    from ecg_gateway.cli import _parser
    from ecg_gateway.cli_audit import cmd_audit
    from ecg_gateway.config import load_config

    capsys.readouterr()
    assert cmd_audit(_parser().parse_args(["audit", "--config", str(config), *argv]), load_config(config)) == 0
    return capsys.readouterr().out


def test_audit_cli_json_lines_filters_and_is_itself_audited(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade_to_head(f"sqlite:///{tmp_path / 'gw.db'}")
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    with make_session_factory(engine).begin() as s:
        record_event(s, "received", message_id=7, peer="CART1@127.0.0.1:5000", detail={"source": "dicom"})
        record_event(s, "rejected", peer="127.0.0.1:5001", detail={"source": "hl7", "ack": "AE", "err": 102})
    engine.dispose()
    first = run_cli("audit", "--config", str(config), "--json", "--kind", "rejected", "--since", "2000-01-01")
    assert first.returncode == 0, first.stderr
    (line,) = first.stdout.splitlines()
    assert json.loads(line)["detail"] == {"source": "hl7", "ack": "AE", "err": 102}
    table = _audit(config, capsys)
    assert "110104" in table and "3 event(s)" in table
    used = _audit(config, capsys, "--json", "--kind", "audit_log_used").splitlines()
    assert [json.loads(x)["dicom"]["EventID"]["code"] for x in used] == ["110101", "110101"]  # the reads before
    assert json.loads(used[0])["actor"]
    assert run_cli("audit", "--config", str(config), "--since", "yesterday").returncode == 2
    assert "received             110104 DICOM Instances Transferred" in _audit(config, capsys, "--codes")
