"""HL7 v2 over MLLP through a running ``serve``: payload kinds a-d, duplicates, kill -9."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select

from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Job, Message
from tests.support.carts import msa_fields, send_all
from tests.support.gateway import (
    GatewayProcess,
    reap_daemons,
    run_cli,
    running_daemons,
    write_config,
)
from tests.support.hl7_builders import ed_oru, ptbxl_record, waveform_oru
from tests.support.paths import shared_data


def _messages(payloads: dict[str, bytes]) -> list[bytes]:
    return list(payloads.values())


def _payloads() -> dict[str, bytes]:
    samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
    return {
        "A-NATIVE": waveform_oru(samples, leads, fs, control_id="A-NATIVE"),
        "B-DICOM": ed_oru(shared_data("dicom-ecg", "ecgtoolkit_Example.dcm").read_bytes(), control_id="B-DICOM"),
        "C-AECG": ed_oru(shared_data("aecg", "hl7_2003-12_Example_aECG.xml").read_bytes(), subtype="XML",
                         data_type="text", control_id="C-AECG"),
        "D-MUSE": ed_oru(next(shared_data("vendor-xml", "ge-muse").glob("*.xml")).read_bytes(), subtype="XML",
                         data_type="text", control_id="D-MUSE"),
    }


def test_each_payload_kind_gets_aa_and_appears_in_status(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    try:
        payloads = _payloads()
        acks = send_all(proc.ports["hl7"], list(payloads.values()))
        for control_id, ack in zip(payloads, acks, strict=True):
            assert msa_fields(ack)[1:3] == ["AA", control_id], ack
        report = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
        assert report["messages"] == 4 and report["jobs"] == {"queued": 4}
    finally:
        proc.stop()


def test_t6_kill_9_after_aa_loses_nothing_and_duplicates_store_once(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, http={"enabled": False}, dicom={"enabled": False})
    payload = _payloads()["A-NATIVE"]  # before the daemon: a skip for missing data leaves none running
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    acks = send_all(proc.ports["hl7"], [payload, payload])
    assert [msa_fields(a)[1] for a in acks] == ["AA", "AA"]
    proc.kill()
    restarted = GatewayProcess(config, "--role", "ingest").wait_started()
    assert msa_fields(send_all(restarted.ports["hl7"], [payload])[0])[1] == "AA"
    restarted.stop()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        counts = (s.scalar(select(func.count()).select_from(Message)), s.scalar(select(func.count()).select_from(Job)))
    engine.dispose()
    assert counts == (1, 1)


def test_a_daemon_left_running_by_a_test_is_reaped(tmp_path: Path) -> None:
    """The conftest's safety net: a daemon still running when its test ends (a skip or a
    failure before the test's own cleanup) is killed, and only that one."""
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", http={"enabled": False},
                          dicom={"enabled": False}, hl7={"enabled": False})
    before = running_daemons()
    left = GatewayProcess(config, "--role", "ingest")
    assert left.proc.pid in running_daemons()
    assert reap_daemons(keep=before) == [left.proc.pid]
    assert left.proc.poll() is not None and left.proc.pid not in running_daemons()
