"""HL7 v2 inbound decoding: tokenizer, header, native waveforms, ED payloads, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecg_gateway import composite
from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError
from ecg_gateway.inbound.aecg import decode_aecg
from ecg_gateway.inbound.decode import HL7V2, decode_message
from ecg_gateway.inbound.dicom import decode_dicom_bytes
from ecg_gateway.inbound.hl7 import decode_hl7, parse_header, parse_message
from ecg_gateway.inbound.hl7_tokens import (
    Encoding,
    Hl7ContentError,
    Hl7EncodingError,
    Hl7HeaderError,
    parse_numbers,
    unescape,
)
from ecg_gateway.inbound.muse import decode_muse
from tests.support.hl7_builders import (
    cinc_record,
    ed_oru,
    msh,
    patient_segments,
    ptbxl_record,
    waveform_oru,
    waveform_segments,
)
from tests.support.paths import shared_data

PTBXL = ("ptbxl", "records100", "00000", "00001_lr.hea")


@pytest.fixture(scope="module")
def ptbxl():  # type: ignore[no-untyped-def]
    return ptbxl_record(shared_data(*PTBXL).with_suffix(""))


def source_ecg(samples: np.ndarray, leads: tuple[str, ...], fs: float) -> Ecg:
    """The recording as the WFDB path would give it: digital / 1000 = mV."""
    return Ecg(signal=samples / 1000.0, fs=fs, leads=leads, source="wfdb").with_standard_leads()


def assert_same_ecg(got: Ecg, want: Ecg, quantum_mv: float) -> None:
    assert got.leads == want.leads
    assert got.fs == want.fs
    assert got.signal.shape == want.signal.shape
    assert np.abs(got.signal - want.signal).max() <= quantum_mv


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


# --- tokenizer ----------------------------------------------------------------------------

def test_unescape_all_delimiters() -> None:
    enc = Encoding()
    assert unescape(r"A\F\B\S\C\T\D\R\E\E\F", enc) == "A|B^C&D~E\\F"
    assert unescape(r"x\X41C3\y\H\z\N\.", enc) == "xAÃy" + "z."
    assert unescape("plain", enc) == "plain"


def test_header_fields_and_custom_delimiters() -> None:
    raw = b"MSH#*!$%#SEND*X#FAC*Y#RCV#RFAC#20250101##ORU*R01*ORU_R01#ID$T$1#P*T#2.5.1######8859/1\r"
    header = parse_header(raw)
    assert header.encoding == Encoding("#", "*", "!", "$", "%")
    assert (header.sending_application, header.sending_facility) == ("SEND", "FAC")
    assert (header.message_type, header.trigger_event) == ("ORU", "R01")
    assert header.control_id == "ID%1"  # escaped subcomponent separator (here %) is data
    assert (header.processing_id, header.version, header.charset) == ("P", "2.5.1", "8859/1")
    assert not header.enhanced_mode


@pytest.mark.parametrize(("raw", "code", "field"), [
    (b"PID|1||x\r", 100, None),
    (b"", 100, None),
    (b"MSHA^~\\&|x\r", 102, 1),
    (b"MSH|^~|CART\r", 102, 2),
    (b"MSH|^^\\&|CART\r", 102, 2),
    (b"MSH|^~\\&|CART|WARD|GW|H|2025||ORU^R01||P|2.5.1\r", 101, 10),
])
def test_header_errors(raw: bytes, code: int, field: int | None) -> None:
    with pytest.raises(Hl7HeaderError) as info:
        parse_header(raw)
    assert info.value.code == code and info.value.location.field == field


def test_segment_separators_lf_crlf_and_bom(ptbxl) -> None:  # type: ignore[no-untyped-def]
    raw = waveform_oru(*ptbxl)
    want = decode_hl7(raw)
    for variant in (raw.replace(b"\r", b"\n"), raw.replace(b"\r", b"\r\n"), b"\xef\xbb\xbf" + raw):
        assert np.array_equal(decode_hl7(variant).signal, want.signal)


def test_parse_numbers_accepts_nm_and_rejects_everything_else() -> None:
    values, kinds = parse_numbers("1^-2.5^+3^.5^7.~8^0^-0", "^~")
    assert values.tolist() == [1, -2.5, 3, 0.5, 7, 8, 0, 0]
    assert kinds.tolist() == [0, 0, 0, 0, 1, 0, 0]
    for bad in ["1^NaN", "1^1e400", "1^x", "1^^2", "1^ 2", "1_0", "+-1", "1.2.3", "-", "", "2^",
                "1" * 400, "１"]:
        with pytest.raises(ValueError):
            parse_numbers(bad, "^")


nm_tokens = st.one_of(
    st.integers(-10**15 + 1, 10**15 - 1).map(str),
    st.integers(0, 10**6).map(lambda i: f"+{i}"),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.4f}"),
)


@given(st.lists(nm_tokens, min_size=1, max_size=50), st.sampled_from(["^", "^~"]))
def test_parse_numbers_equals_float_of_each_token(tokens: list[str], seps: str) -> None:
    text = "".join(t + (seps[-1] if i % 3 == 2 else seps[0]) for i, t in enumerate(tokens))[:-1]
    values, kinds = parse_numbers(text, seps)
    assert values.tolist() == [float(t) for t in tokens]
    assert kinds.size == len(tokens) - 1


# --- native waveform (a) -------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["MA", "NA", "NA-groups"])
def test_native_waveform_equals_source_record(ptbxl, layout: str) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    ecg = decode_hl7(waveform_oru(samples, leads, fs, layout=layout, chunk=137))
    assert_same_ecg(ecg, source_ecg(samples, leads, fs), quantum_mv=1e-3)
    assert ecg.source == "hl7" and ecg.uid == "CTRL-1"
    assert ecg.acquired_at is not None and ecg.acquired_at.year == 2025


def test_native_waveform_12_lead_500hz_cinc_record() -> None:
    samples, leads, fs = cinc_record(
        shared_data("cinc2021-samples", "twelve_leads_test_sample", "HR06009.hea"))
    ecg = decode_hl7(waveform_oru(samples, leads, fs, layout="MA"))
    assert_same_ecg(ecg, Ecg(samples / 1000.0, fs, leads, "wfdb").with_standard_leads(), 1e-3)
    assert ecg.fs == 500.0 and ecg.n_samples == 5000


def test_sensitivity_correction_baseline_and_units(ptbxl) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    # raw counts of 2.5 uV with a 100 uV baseline: mV = (raw * 2.5 + 100) / 1000
    raw_counts = np.round((samples - 100) / 2.5).astype(np.int64)
    ecg = decode_hl7(waveform_oru(raw_counts, leads, fs, sensitivity=2.5, baseline=100))
    want = source_ecg(raw_counts * 2.5 + 100, leads, fs)
    assert_same_ecg(ecg, want, quantum_mv=2.5e-3)
    in_mv = decode_hl7(waveform_oru(samples, leads, fs, sensitivity=0.001, unit="mV"))
    assert_same_ecg(in_mv, source_ecg(samples, leads, fs), quantum_mv=1e-6)


def test_native_waveform_through_the_worker_dispatcher(ptbxl) -> None:  # type: ignore[no-untyped-def]
    raw = waveform_oru(*ptbxl)
    assert np.array_equal(decode_message(HL7V2, raw).signal, decode_hl7(raw).signal)


def test_demographics_kept_and_escapes_are_data(ptbxl) -> None:  # type: ignore[no-untyped-def]
    patient = {"family": "O'NEIL|SMITH^JR", "given": "ANNE&MARIE", "patient_id": "ID~7"}
    ecg = decode_hl7(waveform_oru(*ptbxl, patient=patient))
    d = ecg.demographics
    # components joined by ^ (ecg_gateway.composite): a ^ or & that was data stays escaped
    assert d.patient_name == "O'NEIL|SMITH\\S\\JR^ANNE\\T\\MARIE"
    assert composite.split(d.patient_name) == [["O'NEIL|SMITH^JR"], ["ANNE&MARIE"]]
    assert d.patient_id == "ID~7^^^HOSP^MR" and composite.first(d.patient_id) == "ID~7"
    assert (d.birth_date, d.sex, d.location) == ("19600101", "F", "CARDIO^101^1^HOSP")
    assert (d.placer_order, d.filler_order) == ("PLC-77", "FIL-88")
    assert "DOE" not in repr(d) and "O'NEIL" not in repr(ecg)


def test_latin1_by_msh18_and_utf8(ptbxl) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    for charset, codec in (("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8"), ("", "utf-8")):
        text = waveform_oru(samples, leads, fs, charset=charset).decode("ascii")
        raw = text.replace("DOE^JANE", "MÜLLER^JOSÉ").encode(codec)
        assert decode_hl7(raw).demographics.patient_name == "MÜLLER^JOSÉ"
    latin = waveform_oru(samples, leads, fs).decode().replace("DOE", "MÜLLER").encode("latin-1")
    with pytest.raises(Hl7EncodingError):
        decode_hl7(latin)  # no MSH-18: UTF-8 expected, and these bytes are not UTF-8
    with pytest.raises(Hl7EncodingError):
        decode_hl7(waveform_oru(samples, leads, fs, charset="ISO IR87"))


def _tamper(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the first ``old`` in the waveform data (a delimiter) or else in the OBX."""
    start = raw.index(b"WAV|1|") + 6 if old in (b"^", b"~") else raw.index(b"\rOBX|")
    assert old in raw[start:]
    return raw[:start] + raw[start:].replace(old, new, 1)


@pytest.mark.parametrize(("layout", "old", "new", "code"), [
    ("MA", b"~", b"~NaN^", 102),
    ("NA", b"^", b"^1e400^", 102),
    ("NA", b"^", b"^abc^", 102),
    ("MA", b"~", b"~7^", 102),  # one multiplexed row with an extra value
    ("NA-groups", b"^", b"^^", 102),
    ("MA", b"&uV&", b"&mmHg&", 102),
    ("MA", b"&0^100\r", b"&0^\r", 101),  # sampling frequency missing
    ("MA", b"&0^100\r", b"&0^0\r", 102),  # ... or out of range
])
def test_content_errors_name_the_obx(ptbxl, layout: str, old: bytes, new: bytes, code: int) -> None:  # type: ignore[no-untyped-def]
    raw = _tamper(waveform_oru(*ptbxl, layout=layout), old, new)
    with pytest.raises(Hl7ContentError) as info:
        decode_hl7(raw)
    assert info.value.code == code
    assert info.value.location.segment == "OBX" and info.value.location.field == 5
    assert info.value.field == "OBX-5"


def test_wrong_sample_count_between_leads(ptbxl) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    segs = waveform_segments(samples, leads, fs, layout="NA")
    segs[-1] = segs[-1].rsplit("^", 1)[0]  # V6 one sample short
    with pytest.raises(Hl7ContentError, match="sample counts"):
        decode_hl7(message(msh("X"), *patient_segments(), *segs))


def test_missing_leads_and_no_ecg(ptbxl) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    with pytest.raises(InvalidEcgError, match="missing leads"):
        decode_hl7(waveform_oru(samples[:6], leads[:6], fs))
    with pytest.raises(Hl7ContentError) as info:
        decode_hl7(message(msh("X"), *patient_segments(), "OBX|1|ST|8601-7^EKG impression^LN||Sinus"))
    assert info.value.code == 101
    pdf_only = ed_oru(b"%PDF-1.4 report", subtype="pdf")
    with pytest.raises(Hl7ContentError, match="no ECG"):
        decode_hl7(pdf_only)


def test_mdm_t02_with_txa_order_numbers(ptbxl) -> None:  # type: ignore[no-untyped-def]
    samples, leads, fs = ptbxl
    segs = [msh("M1", message_type="MDM^T02^MDM_T02"), "EVN|T02|20250101",
            "PID|1||P9^^^HOSP^MR||ROE^RICHARD||19500505|M", "PV1|1|I|ICU^2^1",
            "TXA|1|EC|TX|||||||||||PL-1|FI-2", *waveform_segments(samples, leads, fs)]
    ecg = decode_hl7(message(*segs))
    assert ecg.demographics.placer_order == "PL-1" and ecg.demographics.filler_order == "FI-2"
    assert composite.first(ecg.demographics.patient_id) == "P9"


# --- encapsulated payloads (b, c, d) -----------------------------------------------------------

def test_ed_dicom_equals_dicom_path() -> None:
    raw = shared_data("dicom-ecg", "ecgtoolkit_Example.dcm").read_bytes()
    ecg = decode_hl7(ed_oru(raw, subtype="DICOM"))
    assert_same_ecg(ecg, decode_dicom_bytes(raw), quantum_mv=0.0)
    assert ecg.demographics.patient_id == "PAT-0001^^^HOSP^MR"  # the HL7 PID wins over the DICOM one


def test_ed_aecg_equals_dicom_of_same_recording() -> None:
    dicom = decode_dicom_bytes(shared_data("dicom-ecg", "ecgtoolkit_Example.dcm").read_bytes())
    xml = shared_data("aecg", "hl7_2003-12_Example_aECG.xml").read_bytes()
    ecg = decode_hl7(ed_oru(xml, subtype="XML", data_type="text"))
    assert_same_ecg(ecg, dicom, quantum_mv=2.5e-3)  # one 2.5 uV quantum
    assert_same_ecg(ecg, decode_aecg(xml), quantum_mv=0.0)


@pytest.mark.parametrize("name", ["MUSE_20200923_093504_79000_example.xml", "easyRecg_muse_ecg1.xml"])
def test_ed_muse_equals_muse_decoder(name: str) -> None:
    xml = shared_data("vendor-xml", "ge-muse", name).read_bytes()
    ecg = decode_hl7(ed_oru(xml, subtype="XML", data_type="text"))
    assert_same_ecg(ecg, decode_muse(xml), quantum_mv=0.0)


def test_ed_after_a_pdf_report_and_bad_embedded_payload() -> None:
    raw = shared_data("dicom-ecg", "ecgtoolkit_Example.dcm").read_bytes()
    pdf = "OBX|1|ED|11524-6^EKG^LN|1|ECG^application^pdf^Base64^JVBERi0xLjQK"
    assert decode_hl7(ed_oru(raw, extra_obx=[pdf])).n_samples == 5000
    broken = raw[:132] + raw[132:2000]  # truncated DICOM
    with pytest.raises(Hl7ContentError) as info:
        decode_hl7(ed_oru(broken))
    assert info.value.location.sequence == 1 and info.value.code == 102


def test_parse_message_splits_segments(ptbxl) -> None:  # type: ignore[no-untyped-def]
    msg = parse_message(waveform_oru(*ptbxl, layout="NA"))
    ids = [s.id for s in msg.segments]
    assert ids[:5] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    assert ids.count("OBX") == 1 + 8 + 8
    assert msg.first("MSH").get(10) == "CTRL-1"  # type: ignore[union-attr]
