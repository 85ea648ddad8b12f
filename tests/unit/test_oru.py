"""ORU^R01 composer: every field of issue #5, hl7apy validation, escaping round trips."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import hl7
import numpy as np
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecg_gateway import composite
from ecg_gateway.config import OutboundConfig
from ecg_gateway.ecg import Demographics
from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.inbound.hl7 import decode_hl7
from ecg_gateway.outbound.oru import (
    ComposeError,
    MessageView,
    ResultView,
    compose_oru,
    dicom_pn_to_xpn,
    escape,
)
from tests.support.hl7_builders import waveform_oru

NOW = datetime(2025, 1, 1, 12, 0, 5, tzinfo=UTC)
ACQUIRED = datetime(2025, 1, 1, 11, 58, 0)  # cart local time, no zone (as DICOM sends it)
SHA = "0123456789abcdef" * 4
CFG = OutboundConfig(host="ehr.example", sending_facility="WARD7")
# hl7apy's 2.5.1 tables predate CWE in table 0125 and list no local (99zzz) or UCUM systems.
KNOWN_WARNINGS = ("not in table HL70125", "not in table HL70396")


def result(category: str = "acute", probs: tuple[float | None, ...] = (0.01, 0.02, 0.04, 0.93),
           ) -> ResultView:
    return ResultView(category, *probs, model_id="ecg-resnet@1.2", model_sha256=SHA)


def message(**ids: str) -> MessageView:
    base = {"patient_id": "PAT123", "patient_name": "DOE^JOHN^Q", "birth_date": "19600101",
            "sex": "M", "location": "ED-3", "placer_order": "PLC-9", "filler_order": "FIL-8",
            "accession": "ACC-7"}
    base.update(ids)
    return MessageView(Demographics(**base), ecg_uid="1.2.826.0.1.3680043.8.498.1",
                       received_at=NOW - timedelta(seconds=30), acquired_at=ACQUIRED)


def compose(res: ResultView | None = None, msg: MessageView | None = None,
            pdf: bytes | None = None, control_id: str = "ECGGW0000000001") -> str:
    raw = compose_oru(res or result(), msg or message(), control_id, CFG, pdf, NOW)
    assert raw.endswith(b"\r") and b"\n" not in raw
    return raw.decode("utf-8")


def hl7apy_validate(er7: str, tmp_path: Path) -> list[str]:
    """Parse and validate with hl7apy; raises on any error, returns unexplained warnings."""
    msg = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    report = tmp_path / "hl7apy-report.txt"
    msg.validate(report_file=str(report))
    lines = report.read_text().splitlines()
    assert not [line for line in lines if line.startswith("Error")]
    return [line for line in lines if not any(k in line for k in KNOWN_WARNINGS)]


def segments(er7: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in er7.rstrip("\r").split("\r"):
        fields = line.split("|")
        if fields[0] == "MSH":
            fields.insert(1, "|")  # MSH-1 is the separator itself
        out.setdefault(fields[0], []).append(fields)
    return out


def field(seg: list[str], n: int) -> str:
    return seg[n] if len(seg) > n else ""


def test_acute_oru_has_every_field_and_validates(tmp_path: Path) -> None:
    pdf = b"%PDF-1.4 minimal\n%%EOF\n"
    er7 = compose(pdf=pdf)
    assert hl7apy_validate(er7, tmp_path) == []
    seg = segments(er7)
    assert [line.split("|")[0] for line in er7.rstrip("\r").split("\r")] == [
        "MSH", "PID", "PV1", "ORC", "OBR", "TQ1", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX",
        "NTE", "OBX"]
    msh = seg["MSH"][0]
    assert msh[2] == "^~\\&" and msh[3:7] == ["ECG-GATEWAY", "WARD7", "EHR", "HOSP"]
    assert msh[7] == "20250101120005+0000"
    assert msh[9] == "ORU^R01^ORU_R01" and msh[10] == "ECGGW0000000001"
    assert msh[11] == "P" and msh[12] == "2.5.1" and msh[18] == "UNICODE UTF-8"
    assert field(msh, 15) == "" and field(msh, 16) == ""  # original-mode ACK
    pid = seg["PID"][0]
    assert pid[3] == "PAT123" and pid[5] == "DOE^JOHN^Q" and pid[7] == "19600101"
    assert pid[8] == "M"
    assert seg["PV1"][0][1:4] == ["1", "U", "ED-3"]
    assert seg["ORC"][0][1:4] == ["RE", "PLC-9", "FIL-8"]
    obr = seg["OBR"][0]
    assert obr[2:5] == ["PLC-9", "FIL-8", "11524-6^EKG study^LN"]
    assert obr[7] == "20250101115800" and obr[18] == "ACC-7"
    assert obr[22] == "20250101120005+0000" and obr[24:26] == ["EC", "P"]
    assert obr[27] == "^^^^^S"
    assert field(seg["TQ1"][0], 9) == "S"
    obx = seg["OBX"]
    assert [o[1] for o in obx] == [str(i) for i in range(1, 8)]
    category = obx[0]
    assert category[2] == "CWE" and category[3] == "ECGGW-CAT^ECG AI triage category^99ECGGW"
    assert category[5] == "acute^Acute^99ECGGW" and category[8] == "AA"
    probs = {o[3].split("^")[0]: float(o[5]) for o in obx[1:5]}
    assert probs == {"ECGGW-P-NORMAL": 0.01, "ECGGW-P-ABNORMAL": 0.02,
                     "ECGGW-P-SUBACUTE": 0.04, "ECGGW-P-ACUTE": 0.93}
    assert all(o[2] == "NM" and o[6] == "1^^UCUM" for o in obx[1:5])
    impression = obx[5]
    assert impression[2] == "ST" and impression[3] == "8601-7^EKG impression^LN"
    assert "ACUTE" in impression[5] and "physician" in impression[5] and impression[8] == "AA"
    for o in obx[:6]:
        assert o[11] == "P" and o[14] == "20250101115800"
        assert o[17] == "ecg-resnet@1.2^Automated ECG triage model^99ECGGW"
        assert o[18] == "ecg-resnet@1.2^ECG-GATEWAY^0123456789abcdef"
    nte = seg["NTE"][0]
    assert "physician must review and confirm" in nte[3] and "not a diagnosis" in nte[3]
    ed = obx[6]
    assert ed[2] == "ED" and ed[3] == "11524-6^EKG study^LN" and ed[11] == "P"
    source, kind, subtype, encoding, data = ed[5].split("^")
    assert (source, kind, subtype, encoding) == ("", "Application", "PDF", "Base64")
    assert base64.b64decode(data, validate=True) == pdf


def test_hl7apy_sees_the_ORU_R01_structure() -> None:
    msg = parse_message(compose(pdf=b"%PDF"), validation_level=VALIDATION_LEVEL.TOLERANT,
                        find_groups=True)
    result_group = msg.oru_r01_patient_result
    assert result_group.oru_r01_patient.pid.pid_3.to_er7() == "PAT123"
    assert result_group.oru_r01_patient.oru_r01_visit.pv1.pv1_3.to_er7() == "ED-3"
    order = result_group.oru_r01_order_observation
    assert order.obr.obr_4.to_er7() == "11524-6^EKG study^LN"
    assert order.oru_r01_timing_qty.tq1.tq1_9.to_er7() == "S"
    observations = order.children.get("ORU_R01_OBSERVATION")
    assert len(observations) == 7
    impression = observations[5]
    assert impression.obx.obx_3.to_er7() == "8601-7^EKG impression^LN"
    assert "physician" in impression.nte.nte_3.to_er7()  # the note belongs to the impression


@pytest.mark.parametrize(("category", "flag", "priority"), [
    ("acute", "AA", "S"), ("subacute", "A", "R"), ("abnormal_not_acute", "A", "R"),
    ("normal", "N", "R"),
])
def test_flags_and_priority_per_category(category: str, flag: str, priority: str,
                                         tmp_path: Path) -> None:
    er7 = compose(result(category, (0.7, 0.1, 0.1, 0.1)))
    assert hl7apy_validate(er7, tmp_path) == []
    seg = segments(er7)
    assert seg["OBX"][0][5].split("^")[0] == category and seg["OBX"][0][8] == flag
    assert seg["OBX"][5][8] == flag
    assert field(seg["TQ1"][0], 9) == priority and seg["OBR"][0][27] == f"^^^^^{priority}"


def test_uninterpretable_has_own_code_and_no_probabilities(tmp_path: Path) -> None:
    res = replace(result("uninterpretable", (None, None, None, None)),
                  quality={"ok": False, "reasons": ["lead_off:V1,V2", "noise:II"], "metrics": {}})
    er7 = compose(res)
    assert hl7apy_validate(er7, tmp_path) == []
    obx = segments(er7)["OBX"]
    assert len(obx) == 2
    assert obx[0][5].startswith("uninterpretable^Uninterpretable") and field(obx[0], 8) == ""
    assert "UNINTERPRETABLE" in obx[1][5] and "physician" in obx[1][5]
    assert "lead_off:V1,V2; noise:II" in obx[1][5]


def test_minimal_demographics_still_validate(tmp_path: Path) -> None:
    msg = MessageView(Demographics(patient_id="P1"), ecg_uid=None,
                      received_at=NOW - timedelta(seconds=30))
    er7 = compose(msg=msg)
    assert hl7apy_validate(er7, tmp_path) == []
    seg = segments(er7)
    assert "PV1" not in seg
    assert seg["PID"][0][3:6] == ["P1", "", "^^^^^^U"]  # name type U: no name known
    assert seg["OBR"][0][7] == "20250101115935+0000"  # received time stands in for acquisition
    assert "ECG UID" not in seg["NTE"][0][3]


_SINE = (np.sin(np.linspace(0, 60, 5000))[None, :].repeat(8, 0) * 500,
         ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), 500.0)
HOSTILE = st.text(alphabet=st.sampled_from(list("|^~\\&\r\n\x0b\x1c") + list("AZaz09 .-'ÄÖé漢")),
                  min_size=1, max_size=24)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patient_id=HOSTILE, family=HOSTILE, given_name=HOSTILE, placer=HOSTILE, filler=HOSTILE,
       accession=HOSTILE, location=HOSTILE)
def test_copied_fields_round_trip_through_escaping(patient_id: str, family: str, given_name: str,
                                                   placer: str, filler: str, accession: str,
                                                   location: str) -> None:
    """Every copied field, with every delimiter as data, unescapes to what came in."""
    msg = message(patient_id=composite.join([[patient_id], [], [], ["HOSP", placer], ["MR"]]),
                  patient_name=composite.join([[family], [given_name]]), placer_order=placer,
                  filler_order=filler, accession=accession,
                  location=composite.join([[location], ["12"], [filler]]))
    er7 = compose(msg=msg)
    names = [line[:4] for line in er7.rstrip("\r").split("\r")]
    assert names == ["MSH|", "PID|", "PV1|", "ORC|", "OBR|", "TQ1|", *["OBX|"] * 6, "NTE|"]
    parsed = hl7.parse(er7)
    assert parsed["PID.F3.R1.C1"] == patient_id and parsed["PID.F3.R1.C5"] == "MR"
    assert parsed["PID.F3.R1.C4.S1"] == "HOSP" and parsed["PID.F3.R1.C4.S2"] == placer
    assert parsed["PID.F5.R1.C1"] == family and parsed["PID.F5.R1.C2"] == given_name
    assert parsed["ORC.F2"] == placer and parsed["ORC.F3"] == filler
    assert parsed["OBR.F2"] == placer and parsed["OBR.F3"] == filler
    assert parsed["OBR.F18"] == accession
    assert parsed["PV1.F3.R1.C1"] == location and parsed["PV1.F3.R1.C3"] == filler


def test_issue_27_escapes_inside_components_survive() -> None:
    """``\\S\\`` inside a component stays data: the inbound decoder keeps it (composite)."""
    raw = waveform_oru(*_SINE, control_id="ESC-1")
    raw = re.sub(rb"PID\|[^\r]*", rb"PID|1||IOP-0001^^^HOSP^MR||O'NEIL^ANN^M\\S\\X||19700101|F", raw)
    raw = re.sub(rb"PV1\|[^\r]*", rb"PV1|1|O|WARD\\S\\A^1^2^HOSP", raw)
    inbound = decode_hl7(raw)
    er7 = compose(msg=MessageView(inbound.demographics, "u", NOW))
    seg = segments(er7)
    assert seg["PID"][0][3] == "IOP-0001^^^HOSP^MR"
    assert seg["PID"][0][5] == "O'NEIL^ANN^M\\S\\X"
    assert seg["PV1"][0][3] == "WARD\\S\\A^1^2^HOSP"


def test_location_components_are_kept() -> None:
    parsed = hl7.parse(compose(msg=message(location="ED^12^B&2^HOSP")))
    assert parsed["PV1.F3.R1.C1"] == "ED" and parsed["PV1.F3.R1.C3.S2"] == "2"
    assert parsed["PV1.F3.R1.C4"] == "HOSP"


def test_t11_pid_with_every_delimiter_round_trips_in_hl7apy(tmp_path: Path) -> None:
    hostile = "A|B^C~D\\E&F"
    family = "O'B|R~I\\E&N^X"
    er7 = compose(msg=message(patient_id=composite.single(hostile),
                              patient_name=composite.join([[family], ["ANN"]])))
    assert hl7apy_validate(er7, tmp_path) == []
    pid = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT) \
        .oru_r01_patient_result.oru_r01_patient.pid
    assert len(pid.pid_3.children) == 1 and len(pid.pid_5.children) == 2  # no field split
    assert pid.pid_3.cx_1.to_er7() == "A\\F\\B\\S\\C\\R\\D\\E\\E\\T\\F"
    parsed = hl7.parse(er7)
    assert parsed["PID.F3"] == hostile
    assert parsed["PID.F5.R1.C1"] == family and parsed["PID.F5.R1.C2"] == "ANN"


def test_escape_table() -> None:
    assert escape("a|b^c~d\\e&f") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert escape("x\ry\x0bz\x1c") == "x\\X0D\\y\\X0B\\z\\X1C\\"
    assert escape(None) == "" and escape("Müller") == "Müller"


def test_dicom_person_name_becomes_xpn_order() -> None:
    assert dicom_pn_to_xpn("Doe^John^Q^Dr^Jr") == "Doe^John^Q^Jr^Dr"
    assert dicom_pn_to_xpn("Yamada^Tarou=山田^太郎") == "Yamada^Tarou"
    assert dicom_pn_to_xpn("Anonymous") == "Anonymous"


def test_same_inputs_give_identical_bytes() -> None:
    assert compose(pdf=b"%PDF") == compose(pdf=b"%PDF")


def test_zone_aware_acquisition_keeps_its_offset() -> None:
    cet = timezone(timedelta(hours=1))
    msg = MessageView(Demographics(patient_id="P1"), None, NOW,
                      acquired_at=datetime(2025, 1, 1, 12, 58, tzinfo=cet))
    assert segments(compose(msg=msg))["OBR"][0][7] == "20250101125800+0100"


@pytest.mark.parametrize(("res", "msg", "control_id", "reason"), [
    (result(), message(), "ECG|GW1", "control id"),
    (result(), message(), "X" * 21, "control id"),
    (result("maybe"), message(), "C1", "unknown result category"),
    (result(), message(patient_id=""), "C1", "no patient identifier"),
    (result(probs=(math.nan, 0.1, 0.1, 0.8)), message(), "C1", r"not in \[0, 1\]"),
    (result(probs=(1.5, 0.1, 0.1, 0.8)), message(), "C1", r"not in \[0, 1\]"),
])
def test_uncomposable_results_are_refused(res: ResultView, msg: MessageView, control_id: str,
                                          reason: str) -> None:
    with pytest.raises(ComposeError, match=reason):
        compose_oru(res, msg, control_id, CFG, None, NOW)


def test_bad_birth_date_and_sex_are_not_copied_verbatim() -> None:
    pid = segments(compose(msg=message(birth_date="1960-01-01", sex="male")))["PID"][0]
    assert field(pid, 7) == "" and pid[8] == "M"
    pid = segments(compose(msg=message(sex="X")))["PID"][0]
    assert pid[8] == "U"


# --- issue #27: measurements, statements, impression, corrections -------------------------

MEASURED = Measurements(heart_rate_bpm=61.4, pr_ms=152.0, qrs_ms=88.0, qt_ms=380.0,
                        qtc_bazett_ms=384.5, qtc_fridericia_ms=383.0, p_axis_deg=48.0,
                        qrs_axis_deg=-12.0, t_axis_deg=40.0)


def full_result(**changes: object) -> ResultView:
    res = replace(result(), measurements=MEASURED,
                  statements=(Statement("IMI", "inferior myocardial infarction", 0.81),
                              Statement("STE_", "ST elevation | ^ & ~", 0.4)),
                  decision=DecisionRule("threshold", "p(acute) 0.31 >= 0.12, the threshold that "
                                        "flags 10 % of ECGs", 0.12, 0.1))
    return replace(res, **changes)


def test_measurements_statements_and_decision_validate(tmp_path: Path) -> None:
    er7 = compose(full_result(), pdf=b"%PDF-1.4 tiny\n%%EOF\n")
    assert hl7apy_validate(er7, tmp_path) == []  # the ED here is short, as a real one is not
    obx = segments(er7)["OBX"]
    nm = {o[3].split("^")[0]: (o[5], o[6], o[17]) for o in obx if o[2] == "NM" and "STMT" not in o[3]}
    assert nm["8867-4"] == ("61", "/min^^UCUM", "ECGGW-GLOBAL^Global 12-lead median-beat measurement^99ECGGW")
    assert nm["8625-6"][:2] == ("152", "ms^^UCUM") and nm["8633-0"][:2] == ("88", "ms^^UCUM")
    assert nm["8634-8"][:2] == ("380", "ms^^UCUM") and nm["8636-3"][0] == "384"
    assert nm["8636-3"][2].startswith("ECGGW-BAZETT") and nm["ECGGW-QTCF"][2].startswith("ECGGW-FRIDERICIA")
    assert nm["8626-4"][:2] == ("48", "deg^^UCUM") and nm["8632-7"][0] == "-12" and nm["8638-9"][0] == "40"
    statements = [(o[3].split("^")[0], o[4], o[5]) for o in obx if "ECGGW-STMT" in o[3]]
    assert statements == [("ECGGW-STMT", "1", "IMI^inferior myocardial infarction^99SCPECG"),
                          ("ECGGW-STMT-P", "1", "0.8100"),
                          ("ECGGW-STMT", "2", "STE_^ST elevation \\F\\ \\S\\ \\T\\ \\R\\^99SCPECG"),
                          ("ECGGW-STMT-P", "2", "0.4000")]
    impression = next(o for o in obx if o[3].startswith("8601-7"))[5]
    assert impression == ("AI triage ACUTE: p(acute) 0.31 >= 0.12, the threshold that flags 10 % "
                          "of ECGs - preliminary, requires physician review")
    assert [o[2] for o in obx][-1] == "ED"


def test_unmeasured_values_are_absent_not_zero() -> None:
    partial = Measurements(heart_rate_bpm=72.0, qrs_ms=96.0)
    codes = [o[3].split("^")[0] for o in segments(compose(replace(result(), measurements=partial)))["OBX"]]
    assert "8867-4" in codes and "8633-0" in codes
    assert not {"8625-6", "8634-8", "8636-3", "ECGGW-QTCF", "8626-4", "8632-7", "8638-9"} & set(codes)


def test_impression_never_prints_a_zero_probability_for_its_category() -> None:
    low = result(probs=(0.5, 0.3, 0.197, 0.003))
    text = [o for o in segments(compose(low))["OBX"] if o[3].startswith("8601-7")][0][5]
    assert "p=0.00" not in text and "ACUTE (p<0.01)" in text


def test_correction_is_the_same_order_with_result_status_c(tmp_path: Path) -> None:
    first = segments(compose(full_result()))
    raw = compose_oru(full_result(), message(), "ECGGW0000000002", CFG, b"%PDF-1.4\n", NOW,
                      correction=True).decode()
    assert hl7apy_validate(raw, tmp_path) == []
    corrected = segments(raw)
    assert corrected["OBR"][0][25] == "C" and first["OBR"][0][25] == "P"
    assert corrected["ORC"][0][5] == first["ORC"][0][5] == "A"  # table 0038: results available
    assert corrected["OBR"][0][2:4] == first["OBR"][0][2:4] and corrected["PID"] == first["PID"]


def test_ed_type_is_configurable() -> None:
    cfg = CFG.model_copy(update={"pdf_ed_type": "AP^PDF"})
    raw = compose_oru(result(), message(), "ECGGW0000000003", cfg, b"%PDF", NOW).decode()
    assert segments(raw)["OBX"][-1][5].startswith("^AP^PDF^Base64^")
    with pytest.raises(ValueError):
        OutboundConfig(pdf_ed_type="application/pdf")


def test_accession_stands_in_for_a_missing_filler_order_number() -> None:
    seg = segments(compose(msg=message(placer_order=None, filler_order=None, accession="ACC-7")))
    assert seg["ORC"][0][2:4] == ["", "ACC-7"] and seg["OBR"][0][3] == "ACC-7"
    assert seg["OBR"][0][18] == "ACC-7"
