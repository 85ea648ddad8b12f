"""Admin commands through the real entry point (``python -m ecg_gateway``): output, --json,
one-line errors and the exit codes of design.md (0, 2, 65, 69, 78)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.models import Event, Job, Message, Outbound
from tests.support.admin_rows import CANARY, add_ecg
from tests.support.dicom_builders import ecg_dataset
from tests.support.gateway import GatewayProcess, run_cli, write_config
from tests.support.hl7_builders import ptbxl_record, waveform_oru
from tests.support.paths import shared_data

HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"


def _ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _fails(code: int, *args: str, match: str) -> str:
    result = run_cli(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(("ecg-gateway: error:", "ecg-gateway ")) and match in line, result.stderr
    return line


@pytest.fixture
def admin_db(tmp_path: Path) -> Iterator[tuple[Path, object]]:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade_to_head(db_url)
    engine = make_engine(db_url)
    yield write_config(tmp_path / "c.yaml", db_url), make_session_factory(engine)
    engine.dispose()


def test_jobs_list_and_requeue(admin_db) -> None:  # type: ignore[no-untyped-def]
    config, sessions = admin_db
    c = ("--config", str(config))
    dead = add_ecg(sessions, job_state="dead", category=None, last_error="decode failed: UndecodableError")
    done = add_ecg(sessions)
    listed = json.loads(_ok("jobs", "list", "--state", "dead", "--json", *c))
    assert [(r["id"], r["state"], r["last_error"]) for r in listed] == [
        (dead["job"], "dead", "decode failed: UndecodableError")]
    assert f"{dead['job']:>6} message={dead['message']}" in _ok("jobs", "list", *c)
    _fails(2, "jobs", "list", "--state", "lost", *c, match="unknown state 'lost'")
    _fails(2, "jobs", "requeue", *c, match="needs IDs or --dead")
    _fails(65, "jobs", "requeue", str(done["job"]), str(dead["job"]), *c,
           match=f"job {done['job']} is done, not dead")
    assert json.loads(_ok("jobs", "requeue", str(dead["job"]), "--json", *c)) == {"requeued": 1}
    assert _ok("jobs", "requeue", "--dead", *c).strip() == "requeued 0 job(s)"
    with sessions() as s:
        assert s.get_one(Job, dead["job"]).state == "queued"
        event = s.scalars(select(Event).where(Event.kind == "admin_jobs_requeue")).first()
        assert event is not None and event.actor == "cli" and event.detail["ids"] == [dead["job"]]


def test_outbound_list_and_retry(admin_db) -> None:  # type: ignore[no-untyped-def]
    config, sessions = admin_db
    c = ("--config", str(config))
    dead = add_ecg(sessions, outbound_state="dead")
    add_ecg(sessions)
    (row,) = json.loads(_ok("outbound", "list", "--state", "dead", "--json", *c))
    assert (row["id"], row["state"], row["category"], row["last_error"]) == (
        dead["outbound"], "dead", "acute", "AR from the EHR")
    assert _ok("outbound", "list", *c).strip().endswith("2 row(s)")
    _fails(2, "outbound", "list", "--state", "lost", *c, match="unknown state 'lost'")
    _fails(2, "outbound", "retry", *c, match="needs IDs or --dead")
    assert json.loads(_ok("outbound", "retry", "--dead", "--json", *c)) == {"requeued": 1}
    with sessions() as s:
        assert s.get_one(Outbound, dead["outbound"]).state == "pending"
    delivered = add_ecg(sessions)["outbound"]  # the state check the page has too (issue #31)
    _fails(65, "outbound", "retry", str(delivered), str(dead["outbound"]), *c,
           match=f"outbound row {delivered} is delivered, not dead or pending")
    with sessions() as s:
        assert s.get_one(Outbound, delivered).state == "delivered"


def test_replay_and_purge(admin_db) -> None:  # type: ignore[no-untyped-def]
    config, sessions = admin_db
    c = ("--config", str(config))
    old = add_ecg(sessions, age_days=45)
    fresh = add_ecg(sessions)
    replayed = json.loads(_ok("replay", str(fresh["message"]), "--json", *c))["replayed"]
    assert [r["message_id"] for r in replayed] == [fresh["message"]]
    assert "already has triage job" in _fails(65, "replay", str(fresh["message"]), *c, match="in progress")
    _fails(65, "replay", "424242", *c, match="message 424242 not found")
    _fails(2, "replay", "abc", *c, match="invalid int value")
    _fails(2, "purge", "--older-than", "soon", *c, match="invalid duration 'soon'")
    _fails(2, "purge", *c, match="--older-than")
    assert _ok("purge", "--older-than", "30d", "--dry-run", *c).strip() == \
        "would delete 1 message(s), 1 job(s), 1 result(s), 1 outbound row(s)"
    report = json.loads(_ok("purge", "--older-than", "720h", "--json", *c))
    assert report == {"messages": 1, "jobs": 1, "results": 1, "outbound": 1, "dry_run": False}
    with sessions() as s:
        assert set(s.scalars(select(Message.id))) == {fresh["message"]}
        assert old["message"] not in set(s.scalars(select(Message.id)))


def test_status_shows_destinations_and_delivery_errors(admin_db) -> None:  # type: ignore[no-untyped-def]
    config, sessions = admin_db
    dead = add_ecg(sessions, outbound_state="dead")
    add_ecg(sessions)
    report = json.loads(_ok("status", "--config", str(config), "--json"))
    assert report["destinations"] == {"127.0.0.1:2576": {"dead": 1, "delivered": 1}}
    assert report["last_delivery_errors"] == [
        {"outbound_id": dead["outbound"], "state": "dead", "attempts": 1, "error": "AR from the EHR"}]
    text = _ok("status", "--config", str(config))
    assert "destination 127.0.0.1:2576: dead=1, delivered=1" in text
    assert f"last delivery error: outbound {dead['outbound']} (dead, 1 attempts): AR from the EHR" in text
    assert not any(v in text + json.dumps(report) for v in CANARY.values())


def test_database_not_at_head_exits_78_and_unreachable_exits_69(tmp_path: Path) -> None:
    fresh = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'new.db'}")
    _fails(78, "jobs", "list", "--config", str(fresh), match="migration head")
    _fails(78, "purge", "--older-than", "1d", "--config", str(fresh), match="migration head")
    gone = write_config(tmp_path / "d.yaml", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    _fails(69, "replay", "1", "--config", str(gone), match="database unavailable")


@pytest.fixture
def ingest_gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path]]:
    config = write_config(tmp_path / "g.yaml", f"sqlite:///{tmp_path / 'gw.db'}", http={"enabled": False},
                          dicom={"allowed_calling_ae_titles": ["CART1", "ECGGW_TEST"]})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    yield proc, config
    proc.stop()


def test_send_dicom(ingest_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, config = ingest_gateway
    c = ("--config", str(config), "--port", str(proc.ports["dicom"]))
    real = str(shared_data("dicom-ecg", "pydicom_waveform_ecg.dcm"))
    assert "status 0x0000 Success" in _ok("send-dicom", real, *c)
    answer = json.loads(_ok("send-dicom", real, "--json", *c))  # a duplicate is a success too
    assert answer["status"] == "0x0000" and answer["category"] == "Success"
    broken = ecg_dataset()
    broken.WaveformSequence[0].NumberOfWaveformChannels = 13  # does not match the data
    pydicom.dcmwrite(tmp_path / "broken.dcm", broken, enforce_file_format=True)
    line = _fails(65, "send-dicom", str(tmp_path / "broken.dcm"), *c, match="status 0xA900")
    assert "Failure" in line or "0xA900" in line
    hemo = ecg_dataset(sop_class=HEMODYNAMIC)
    pydicom.dcmwrite(tmp_path / "hemo.dcm", hemo, enforce_file_format=True)
    _fails(65, "send-dicom", str(tmp_path / "hemo.dcm"), *c, match=f"does not accept SOP class {HEMODYNAMIC}")
    _fails(65, "send-dicom", str(config), *c, match="not a DICOM Part 10 file")
    _fails(65, "send-dicom", str(tmp_path / "absent.dcm"), *c, match="cannot read")
    _fails(69, "send-dicom", real, *c, "--aet", "INTRUDER", match="association rejected")
    _fails(69, "send-dicom", real, "--config", str(config), "--port", "1", match="no association")
    engine = make_engine(str(json.loads(_ok("check-config", "--config", str(config), "--json"))
                             ["database"]["url"]))
    with make_session_factory(engine)() as s:
        assert len(list(s.scalars(select(Message.id)))) == 1
    engine.dispose()


def test_send_hl7(ingest_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, config = ingest_gateway
    c = ("--config", str(config), "--port", str(proc.ports["hl7"]))
    samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
    message = waveform_oru(samples, leads, fs, control_id="SEND-HL7-1")
    good = tmp_path / "good.hl7"
    good.write_bytes(message.replace(b"\r", b"\r\n"))  # as an editor would save it
    assert _ok("send-hl7", str(good), *c).strip() == "MSA|AA|SEND-HL7-1"
    answer = json.loads(_ok("send-hl7", str(good), "--json", *c))
    assert (answer["code"], answer["control_id"]) == ("AA", "SEND-HL7-1")
    adt = tmp_path / "adt.hl7"
    adt.write_bytes(message.replace(b"ORU^R01^ORU_R01|SEND-HL7-1", b"ADT^A01^ADT_A01|SEND-HL7-2"))
    _fails(65, "send-hl7", str(adt), *c, match="MSA|AR|SEND-HL7-2|unsupported message type ERR 200")
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(message.split(b"\rOBX")[0].replace(b"SEND-HL7-1", b"SEND-HL7-3") + b"\r")
    _fails(65, "send-hl7", str(empty), *c, match="MSA|AE|SEND-HL7-3")
    _fails(65, "send-hl7", str(config), *c, match="not an HL7 v2 message")
    _fails(69, "send-hl7", str(good), "--config", str(config), "--port", "1", match="cannot connect")


def test_send_hl7_wrap_sends_each_ecg_document_as_an_ed_oru(ingest_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ecg_gateway.inbound.decode import decode_message
    from tests.support.paths import TEST_DATA

    proc, config = ingest_gateway
    c = ("--config", str(config), "--port", str(proc.ports["hl7"]))
    files = [TEST_DATA / "ecgtoolkit_Example.scp", TEST_DATA / "ad4d3d80-d165_1-04_orig.xml",
             TEST_DATA / "129DYPRG.XML", TEST_DATA / "ecgtoolkit_Example.dcm",
             TEST_DATA / "philips_ad4d3d80-d165_1-04_converted.xml",
             shared_data("vendor-xml", "ge-muse", "easyRecg_muse_ecg1.xml")]
    answers = json.loads(_ok("send-hl7", "--wrap", "--json", *map(str, files), *c))
    assert [a["file"] for a in answers] == list(map(str, files))
    assert {a["code"] for a in answers} == {"AA"}
    engine = make_engine(str(json.loads(_ok("check-config", "--config", str(config), "--json"))
                             ["database"]["url"]))
    with make_session_factory(engine)() as s:
        rows = {row.ecg_uid: row for row in s.scalars(select(Message))}
    engine.dispose()
    assert set(rows) == {a["control_id"] for a in answers}
    scp = rows[answers[0]["control_id"]]
    assert scp.identifiers["patient_id"] == "SBJ-123"  # PID-3 filled from the SCP-ECG file
    assert decode_message(scp.content_type, scp.raw).n_samples == 5000
    assert rows[answers[1]["control_id"]].identifiers["patient_id"] == "9999"

    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.7\n")
    result = run_cli("send-hl7", "--wrap", str(pdf), str(files[0]), *c)
    assert result.returncode == 65 and result.stdout.startswith(f"{files[0]}: MSA|AA|")
    assert f"{pdf}: unrecognised file format: a PDF document" in result.stderr
    _fails(65, "send-hl7", "--wrap", str(shared_data("ptbxl", "records100", "00000", "00001_lr.hea")), *c,
           match="a WFDB record is not a document to encapsulate")
