"""Issue #27 acceptance over real sockets: running ``serve`` processes, pynetdicom and MLLP
clients in, a real MLLP EHR out. Acute ORUs carry the PDF (first or in the corrected ORU) and
the measurements; two gateways on two databases never reuse an MSH-10."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from tests.support.carts import c_store, msa_fields, send_all
from tests.support.dicom_builders import ecg_dataset
from tests.support.ehr_peer import EhrPeer, control_id
from tests.support.gateway import GatewayProcess, write_config
from tests.support.hl7_builders import cinc_record, waveform_oru
from tests.support.paths import shared_data

MEASURED = ("8867-4", "8633-0", "8634-8", "8636-3", "8632-7")  # PR: absent without P waves


@pytest.fixture
def ehr() -> Iterator[EhrPeer]:
    peer = EhrPeer()
    yield peer
    peer.close()


def _gateway(tmp_path: Path, name: str, ehr: EhrPeer, **outbound: object) -> GatewayProcess:
    """``serve`` on its own SQLite file; acute_threshold 0 makes every ECG acute."""
    config = write_config(tmp_path / f"{name}.yaml", f"sqlite:///{tmp_path / f'{name}.db'}",
                          model={"acute_threshold": 0.0}, worker={"poll_interval_s": 1},
                          outbound={"host": "127.0.0.1", "port": ehr.port, **outbound})
    proc = GatewayProcess(config).wait_started()
    proc.wait_for_event("model_loaded", timeout=90)
    return proc


def _segments(payload: bytes) -> list[list[str]]:
    return [seg.split("|") for seg in payload.decode().split("\r") if seg]


def _pid(payload: bytes) -> str:
    return next(s for s in _segments(payload) if s[0] == "PID")[3].split("^")[0]


def _hl7_ecg(control: str, patient_id: str) -> bytes:
    samples, leads, fs = cinc_record(shared_data("cinc2021-samples", "training_sample", "A0689.hea"))
    return waveform_oru(samples, leads, fs, control_id=control,
                        patient={"patient_id": patient_id, "placer": "HPLC1", "filler": "HFIL2"})


def test_acute_dicom_and_hl7_reach_the_ehr_with_pdf_and_measurements(tmp_path: Path, ehr: EhrPeer) -> None:
    proc = _gateway(tmp_path, "gw", ehr)
    try:
        ds = pydicom.dcmread(shared_data("dicom-ecg", "pydicom_waveform_ecg.dcm"))
        ds.PatientID = "DCMPAT1"
        assert c_store(proc.ports["dicom"], ds) == 0x0000
        assert msa_fields(send_all(proc.ports["hl7"], [_hl7_ecg("E2E-27-1", "HL7PAT1")])[0])[1] == "AA"
        received = ehr.wait_for(2, timeout=60)
        late = [p for p in received if b"|ED|" not in p]  # a PDF past the budget: its correction
        received = ehr.wait_for(2 + len(late), timeout=60)
    finally:
        proc.stop()
    by_patient: dict[str, list[bytes]] = {}
    for payload in received:
        by_patient.setdefault(_pid(payload), []).append(payload)
    assert set(by_patient) == {"DCMPAT1", "HL7PAT1"}
    for patient, orus in by_patient.items():
        first = orus[0]
        obr = next(s for s in _segments(first) if s[0] == "OBR")
        assert obr[25] == "P" and next(s for s in _segments(first) if s[0] == "TQ1")[9] == "S"
        codes = {s[3].split("^")[0] for s in _segments(first) if s[0] == "OBX"}
        assert set(MEASURED) <= codes, patient
        with_pdf = [p for p in orus if b"|ED|" in p]
        assert with_pdf, f"{patient}: no PDF reached the EHR"
        if with_pdf[0] is not first:  # the PDF was late: the corrected ORU brought it
            assert next(s for s in _segments(with_pdf[0]) if s[0] == "OBR")[25] == "C"
        _validate_with_short_ed(with_pdf[0], tmp_path)


def _validate_with_short_ed(payload: bytes, tmp_path: Path) -> None:
    """hl7apy validation with the ED data cut to 8 characters (v2.5.1 caps OBX-5 at 65536)."""
    text = re.sub(r"(\|\^Application\^PDF\^Base64\^)[^|\r]*", r"\1JVBERi0x", payload.decode())
    msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    report = tmp_path / "report.txt"
    msg.validate(report_file=str(report))
    assert not [line for line in report.read_text().splitlines() if line.startswith("Error")]


def test_two_gateways_on_two_databases_never_reuse_an_msh10(tmp_path: Path, ehr: EhrPeer) -> None:
    gateways = [_gateway(tmp_path, name, ehr, attach_pdf=False) for name in ("a", "b")]
    try:
        for n, proc in enumerate(gateways):
            assert c_store(proc.ports["dicom"], ecg_dataset()) == 0x0000
            hl7 = _hl7_ecg(f"E2E-27-{n}", f"PAT{n}")
            assert msa_fields(send_all(proc.ports["hl7"], [hl7])[0])[1] == "AA"
        received = ehr.wait_for(4, timeout=90)
    finally:
        for proc in gateways:
            proc.stop()
    controls = [control_id(p) for p in received]
    assert len(controls) == 4 and len(set(controls)) == 4  # the old row-id form sent ECGGW..01 twice
    assert all(re.fullmatch(r"ECGGW[0-9A-HJKMNP-TV-Z]{15}", c) for c in controls)
