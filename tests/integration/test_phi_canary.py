"""PHI canary (reliability.md T14): a fake patient through every path, 0 hits in the logs.

One ``serve`` at DEBUG level receives the canary patient by DICOM (accepted, with values
pydicom calls invalid; refused as invalid waveform; truncated) and by HL7 (native waveform,
ED-encapsulated DICOM, bad numbers, unsupported type, a frame over the cap); the worker
triages the accepted ones; the EHR first answers AE/AR with the canary echoed in MSA-3 and
ERR. The daemon's stdout+stderr must not contain the canary anywhere, and the audit trail
(no PHI either) has the 110104 (transferred) and 110106 (export) entries.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from pydicom import config as pydicom_config

from tests.support.carts import c_store, msa_fields, send_all, store_file_bytes
from tests.support.dicom_builders import TWELVE_LEAD, ecg_dataset
from tests.support.ehr_peer import EhrPeer, aa, control_id
from tests.support.gateway import GatewayProcess, run_cli, write_config
from tests.support.hl7_builders import ed_oru, ptbxl_record, waveform_oru
from tests.support.paths import shared_data

CANARY = "ZZCANARY"
DOB = "19011231"
HL7_PATIENT = {"patient_id": f"{CANARY}-ID7", "family": f"{CANARY}-FAMILY", "given": f"{CANARY}-GIVEN",
               "birth": DOB, "placer": f"{CANARY}-PLACER"}
ALL = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]


def _canary_dataset(uid: str | None = None):  # type: ignore[no-untyped-def]
    ds = ecg_dataset(uid=uid)
    ds.PatientName = f"{CANARY}^{'X' * 70}"  # over the PN length: pydicom would warn with the value
    ds.PatientID = f"{CANARY}-DICOM-ID"
    ds.PatientBirthDate = f"{CANARY}{DOB}"  # not a DA: pydicom would warn with the value
    ds.OtherPatientIDs = f"{CANARY}-OTHER"
    return ds


def _ehr_reply(payload: bytes) -> bytes:
    """First copy of each ORU: AE (or AR for one) with the canary echoed; later copies: AA."""
    cid = control_id(payload)
    _ehr_reply.seen = getattr(_ehr_reply, "seen", {})  # type: ignore[attr-defined]
    copies = _ehr_reply.seen[cid] = _ehr_reply.seen.get(cid, 0) + 1  # type: ignore[attr-defined]
    if copies > 1:
        return aa(payload)
    code = "AR" if len(_ehr_reply.seen) == 2 else "AE"  # type: ignore[attr-defined]
    return (f"MSH|^~\\&|EHR|HOSP|ECG-GATEWAY|HOSP|20260101000000||ACK^R01^ACK|A{cid}|P|2.5.1\r"
            f"MSA|{code}|{cid}|unknown patient {CANARY}-FAMILY {DOB}\r"
            f"ERR|||204^Unknown key identifier^HL70357|E||||patient {CANARY}-ID7 born {DOB} not found\r").encode()


def test_t14_phi_canary_never_reaches_the_logs(tmp_path: Path) -> None:
    ehr = EhrPeer(reply=_ehr_reply)
    config = write_config(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'gw.db'}",
                          hl7={"max_frame_bytes": 256 * 1024}, worker={"poll_interval_s": 0.2},
                          logging={"level": "DEBUG"},
                          outbound={"host": "127.0.0.1", "port": ehr.port, "categories": ALL, "max_attempts": 3,
                                    "backoff_initial_s": 0.1, "backoff_max_s": 0.2, "attach_pdf": False})
    proc = GatewayProcess(config).wait_started()
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE  # a sloppy cart
    try:
        proc.wait_for_event("model_loaded", timeout=60)
        port = proc.ports["dicom"]
        # DICOM: accepted; refused (A900); truncated (C000)
        assert c_store(port, _canary_dataset()) == 0x0000
        bad = _canary_dataset()
        bad.WaveformSequence[0].NumberOfWaveformChannels = 0
        assert c_store(port, bad) == 0xA900
        buffer = io.BytesIO()
        _canary_dataset().save_as(buffer, enforce_file_format=True)
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(buffer.getvalue()[:1500])
        assert store_file_bytes(port, truncated, TWELVE_LEAD) == 0xC000
        # HL7: native and ED accepted; bad numbers (AE), unsupported type (AR), over the cap (AE)
        samples, leads, fs = ptbxl_record(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix(""))
        native = waveform_oru(samples, leads, fs, control_id="CANARY-1", patient=HL7_PATIENT)
        encapsulated = ed_oru(buffer.getvalue(), control_id="CANARY-2", patient=HL7_PATIENT)
        at = native.index(b"ECG^WAV|1|") + len(b"ECG^WAV|1|")
        bad_numbers = native[:at].replace(b"CANARY-1", b"CANARY-3") + b"NaN^" + native[at:]
        adt = native.replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01").replace(b"CANARY-1", b"CANARY-4")
        too_large = native.replace(b"CANARY-1", b"CANARY-5") + b"NTE|1||" + CANARY.encode() * 40_000 + b"\r"
        messages = [native, encapsulated, bad_numbers, adt, too_large]
        acks = [msa_fields(a)[1] for a in send_all(proc.ports["hl7"], messages)]
        assert acks == ["AA", "AA", "AE", "AR", "AE"]
        # worker + sender: 3 ORUs; first copies answered AE/AR with the canary echoed
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(ehr.received) >= 5 and _settled(config)):
            time.sleep(0.2)
        assert len(ehr.received) >= 5, len(ehr.received)
    finally:
        pydicom_config.settings.writing_validation_mode = saved
        proc.stop()
        ehr.close()
    logs = proc.output()
    assert "ecg_triaged" in logs and "outbound_send_failed" in logs and "outbound_dead" in logs
    assert "hl7_rejected" in logs and "c_store_rejected" in logs
    assert logs.count(CANARY) == 0 and logs.count(DOB) == 0, [line for line in logs.splitlines() if CANARY in line]
    audit = run_cli("audit", "--config", str(config), "--json")
    assert audit.returncode == 0, audit.stderr
    assert CANARY not in audit.stdout and DOB not in audit.stdout
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    codes = {e["dicom"]["EventID"]["code"] for e in events if e["dicom"]}
    assert {"110100", "110104", "110106", "110103"} <= codes
    rejected = [e for e in events if e["kind"] == "rejected"]
    assert {e["detail"].get("status") or e["detail"].get("ack") for e in rejected} == {"0xA900", "0xC000", "AE", "AR"}


def _settled(config: Path) -> bool:
    report = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    return report["jobs"] == {"done": 3} and set(report["outbound"]) <= {"delivered", "dead"} \
        and sum(report["outbound"].values()) == 3
