"""DICOM C-STORE ingest through a running ``serve``, with a real pynetdicom SCU over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from ecg_gateway.inbound.decode import decode_message
from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.models import Event, Job, Message
from ecg_gateway.store.queue import claim
from tests.support.carts import associate, store_file_bytes
from tests.support.dicom_builders import TWELVE_LEAD, ecg_dataset, synthetic_signal_mv
from tests.support.gateway import GatewayProcess, run_cli, write_config
from tests.support.paths import shared_data

GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path, str]]:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "config.yaml", db_url, dicom={"accept_hemodynamic": True},
                          hl7={"enabled": False}, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    yield proc, config, db_url
    proc.stop()


def _store(port: int, ds: Dataset, context: str | None = None) -> tuple[int, str]:
    assoc = associate(port, [context or str(ds.SOPClassUID)])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()


def _counts(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        counts = (s.scalar(select(func.count()).select_from(Message)),
                  s.scalar(select(func.count()).select_from(Job)))
    engine.dispose()
    return counts


def test_c_echo(gateway) -> None:
    proc, _, _ = gateway
    assoc = associate(proc.ports["dicom"], [Verification])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_every_real_dicom_file_is_stored_and_counted(gateway) -> None:
    proc, config, db_url = gateway
    files = sorted(shared_data("dicom-ecg").glob("*.dcm"))
    assert len(files) == 4
    uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        uids.add(str(ds.SOPInstanceUID))
        assert _store(proc.ports["dicom"], ds)[0] == 0x0000, path.name
    # Two ECG Toolkit conversions share one SOP Instance UID: the second is a recorded conflict.
    assert len(uids) == 3
    report = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert report["messages"] == 3
    assert report["jobs"] == {"queued": 3}
    assert set(report) >= {"messages", "jobs", "results", "outbound"}


def test_synthetic_ecg_round_trips_to_the_same_millivolts(gateway) -> None:
    proc, _, db_url = gateway
    signal = synthetic_signal_mv(500.0, 10.0)
    ds = ecg_dataset(signal, 500.0, sensitivity_uv=2.5)
    assert _store(proc.ports["dicom"], ds)[0] == 0x0000
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        row = s.execute(select(Message.content_type, Message.raw, Message.identifiers)).one()
    engine.dispose()
    ecg = decode_message(row.content_type, row.raw)
    assert ecg.fs == 500.0 and ecg.n_samples == 5000
    assert np.max(np.abs(ecg.signal - signal)) <= 0.0025 / 2 + 1e-6  # within half a quantum
    assert row.identifiers["patient_id"] == "SYN0001"


def test_eight_lead_cart_gets_limb_leads_derived(gateway) -> None:
    proc, _, db_url = gateway
    eight = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    full = synthetic_signal_mv()
    ds = ecg_dataset(full[[0, 1, 6, 7, 8, 9, 10, 11]], leads=eight, scheme="SCPECG")
    assert _store(proc.ports["dicom"], ds)[0] == 0x0000
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        raw = s.scalar(select(Message.raw))
    engine.dispose()
    ecg = decode_message("application/dicom", raw)
    np.testing.assert_allclose(ecg.lead("III"), ecg.lead("II") - ecg.lead("I"), atol=1e-6)
    np.testing.assert_allclose(ecg.lead("aVR"), -(ecg.lead("I") + ecg.lead("II")) / 2, atol=1e-6)


def test_t10_ct_image_is_refused_at_negotiation(gateway) -> None:
    proc, _, _ = gateway
    assoc = associate(proc.ports["dicom"], [CTImageStorage, Verification])
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert CTImageStorage not in accepted and CTImageStorage in rejected


def test_t6_same_sop_instance_uid_three_times_stores_once(gateway) -> None:
    proc, _, db_url = gateway
    ds = ecg_dataset(uid="1.2.826.0.1.3680043.99.1")
    for _ in range(3):
        assert _store(proc.ports["dicom"], ds)[0] == 0x0000
    assert _counts(db_url) == (1, 1)


def _mutate(name: str) -> Dataset:
    ds = ecg_dataset()
    group = ds.WaveformSequence[0]
    if name == "no_waveform":
        del ds.WaveformSequence
    elif name == "zero_channels":
        group.NumberOfWaveformChannels = 0
    elif name == "fourteen_channels":
        group.NumberOfWaveformChannels = 14
    elif name == "length_mismatch":
        group.WaveformData = group.WaveformData + b"\x00\x00"
    elif name.startswith("fs_"):
        group.SamplingFrequency = {"fs_zero": "0", "fs_negative": "-500", "fs_nan": "NaN",
                                   "fs_inf": "inf", "fs_too_high": "5000"}[name]
    elif name == "huge_sample_count":
        group.NumberOfWaveformSamples = 4_000_000
    elif name == "bits_32":
        group.WaveformBitsAllocated = 32
    elif name == "interpretation_us":
        group.WaveformSampleInterpretation = "US"
    elif name == "no_sensitivity_units":
        for ch in group.ChannelDefinitionSequence:
            del ch.ChannelSensitivityUnitsSequence
    elif name == "uid_traversal":
        ds.SOPInstanceUID = "../x"
    elif name == "negative_sensitivity":  # issue #29: it silently inverted every lead
        group.ChannelDefinitionSequence[0].ChannelSensitivity = "-" + str(
            group.ChannelDefinitionSequence[0].ChannelSensitivity)
    elif name == "negative_correction":
        for ch in group.ChannelDefinitionSequence:
            ch.ChannelSensitivityCorrectionFactor = "-1"
    return ds


INVALID_WAVEFORMS = ["no_waveform", "zero_channels", "fourteen_channels", "length_mismatch", "fs_zero",
                     "fs_negative", "fs_nan", "fs_inf", "fs_too_high", "huge_sample_count", "bits_32",
                     "interpretation_us", "no_sensitivity_units", "uid_traversal", "negative_sensitivity",
                     "negative_correction"]


@pytest.mark.parametrize("case", INVALID_WAVEFORMS)
def test_t10_invalid_waveform_gets_a900_and_stores_nothing(gateway, case: str) -> None:
    proc, _, db_url = gateway
    status, comment = _store(proc.ports["dicom"], _mutate(case))
    assert status == 0xA900, (case, hex(status), comment)
    assert comment and "SYN0001" not in comment and "TEST" not in comment
    assert _counts(db_url) == (0, 0)


def test_negative_sensitivity_is_refused_citing_the_standard(gateway) -> None:
    proc, _, _ = gateway
    for case, field in (("negative_sensitivity", "ChannelSensitivity <"),
                        ("negative_correction", "ChannelSensitivityCorrectionFactor <")):
        status, comment = _store(proc.ports["dicom"], _mutate(case))
        assert (status, comment) == (0xA900, f"{field} 0 (PS3.3 C.10.9.1.4.2)")


def test_uids_breaking_ps3_5_9_1_are_stored_and_the_breach_recorded(gateway) -> None:
    """Issue #29 decision: leading zeros and empty components break PS3.5 9.1, yet real devices
    write them (ECG Toolkit: ``…091000..1``); refusing would lose ECGs, so they are stored and
    the received event names the rule (used to pass without a trace)."""
    from pydicom import config as pydicom_config

    proc, _, db_url = gateway
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE  # a sloppy cart
    try:
        for uid in ("1.02.003", "1.2.3.", "1.2.826.0.1.3"):
            assert _store(proc.ports["dicom"], ecg_dataset(uid=uid))[0] == 0x0000
    finally:
        pydicom_config.settings.writing_validation_mode = saved
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        details = {e.detail["ecg_uid"]: e.detail.get("uid_nonconformant")
                   for e in s.scalars(select(Event).where(Event.kind == "received"))}
    engine.dispose()
    assert details == {"1.02.003": "leading zero in a component (PS3.5 9.1)",
                       "1.2.3.": "empty component (PS3.5 9.1)", "1.2.826.0.1.3": None}
    assert "dicom_uid_nonconformant" in proc.output()


def test_t10_dataset_sop_class_differs_from_request_gets_a900(gateway, tmp_path: Path) -> None:
    proc, _, db_url = gateway
    ds = ecg_dataset(sop_class=GENERAL_ECG)
    ds.file_meta.MediaStorageSOPClassUID = TWELVE_LEAD  # the request will say 12-lead
    ds.preamble = b"\x00" * 128
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert store_file_bytes(proc.ports["dicom"], path, TWELVE_LEAD) == 0xA900
    assert _counts(db_url) == (0, 0)


def test_t10_truncated_dataset_gets_c000(gateway, tmp_path: Path) -> None:
    proc, _, db_url = gateway
    path = tmp_path / "full.dcm"
    ecg_dataset().save_as(path, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:1500])
    assert store_file_bytes(proc.ports["dicom"], truncated, TWELVE_LEAD) == 0xC000
    assert _counts(db_url) == (0, 0)


def test_t13_calling_ae_outside_allow_list_is_rejected(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}",
                          dicom={"allowed_calling_ae_titles": ["CART1"]}, hl7={"enabled": False},
                          http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    try:
        assoc = associate(proc.ports["dicom"], [Verification], calling="INTRUDER")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)
        ok = associate(proc.ports["dicom"], [Verification], calling="CART1")
        assert ok.is_established
        ok.release()
    finally:
        proc.stop()


def test_t10_hemodynamic_class_refused_unless_switched_on(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", hl7={"enabled": False},
                          http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    try:
        assoc = associate(proc.ports["dicom"], [HEMODYNAMIC, Verification])
        assert HEMODYNAMIC in {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assoc.release()
    finally:
        proc.stop()


def test_t1_kill_9_after_success_loses_nothing(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = write_config(tmp_path / "c.yaml", db_url, hl7={"enabled": False}, http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    ds = ecg_dataset()
    assert _store(proc.ports["dicom"], ds)[0] == 0x0000
    proc.kill()  # SIGKILL right after the 0x0000
    restarted = GatewayProcess(config, "--role", "ingest").wait_started()
    restarted.stop()
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        uid = s.scalar(select(Message.ecg_uid))
        jobs = claim(s, Job, limit=10, lease_s=30)
    engine.dispose()
    assert uid == str(ds.SOPInstanceUID)
    assert len(jobs) == 1


def test_graceful_shutdown_exits_zero(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}", hl7={"enabled": False},
                          http={"enabled": False})
    proc = GatewayProcess(config, "--role", "ingest").wait_started()
    assert proc.stop() == 0
    assert "gateway_stopped" in proc.output()
