"""Philips SierraECG XML and SCP-ECG decoding: real files, other encodings of the same
recordings, the encodings the real files do not use, and bad input answered precisely."""

from __future__ import annotations

import base64
import contextlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecg_gateway.ecg import STANDARD_LEADS
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.aecg import decode_aecg
from ecg_gateway.inbound.decode import (
    SCP,
    SIERRA,
    decode_file,
    decode_message,
    identify,
    sniff,
    sniff_content_type,
)
from ecg_gateway.inbound.dicom import decode_dicom_bytes
from ecg_gateway.inbound.scp import decode_scp
from ecg_gateway.inbound.sierra import decode_sierra
from tests.support.paths import TEST_DATA, shared_data
from tests.support.scp_builders import ReferenceBeat, scp_record

SIERRA_103 = "129DYPRG.XML"
SIERRA_104 = "ad4d3d80-d165_1-04_orig.xml"
EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def data(name: str) -> bytes:
    return (TEST_DATA / name).read_bytes()


def sierra_text(name: str) -> str:
    raw = data(name)
    return raw.decode("utf-16") if raw.startswith(b"\xff\xfe") else raw.decode("utf-8")


@pytest.fixture(scope="module")
def scp_ints() -> np.ndarray:
    """The 8 independent leads of the real SCP-ECG file in its 2.5 uV units."""
    ecg = decode_scp(data("ecgtoolkit_Example.scp"))
    return np.stack([np.round(ecg.lead(name) / 2.5e-3) for name in EIGHT]).astype(np.int64)


# --- Philips SierraECG ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["129DYPRG.XML", "repbeats_example.xml", "3191723_ZZDEMOPTONLY_1-04_orig.xml",
                                  "ad4d3d80-d165_1-04_orig.xml", "2020-5-18_15-48-11.xml"])
def test_every_sierra_sample_file_decodes(name: str) -> None:
    raw = shared_data("vendor-xml", "philips-sierra", name).read_bytes()
    ecg = decode_message(sniff_content_type(raw[:4096]), raw)
    assert ecg.source == "sierra" and ecg.leads == STANDARD_LEADS
    assert ecg.fs == 500.0 and ecg.n_samples == 5500
    typical = np.median(np.percentile(np.abs(ecg.signal), 99, axis=1))
    assert 0.1 < typical < 5.0  # mV
    # XLI stores III/aVR/aVL/aVF as residuals: rebuilt, they obey Einthoven within rounding
    # (up to the calibration pulse Philips appends after 10 s)
    einthoven = ecg.lead("III") - (ecg.lead("II") - ecg.lead("I"))
    assert np.abs(einthoven[:5000]).max() <= 0.0101


def test_sierra_1_04_matches_its_fda_aecg_conversion() -> None:
    """Same recording, same 5 uV quantum. Philips' converter applied its 60 Hz adaptive notch
    (stated in the aECG; the XML says notchfiltered="False"), so samples differ by mains-band
    noise only: 95 % within 1 LSB, all within 4, and within 2 LSB once 40 Hz and up is removed
    from the difference."""
    aecg_raw = data("philips_ad4d3d80-d165_1-04_converted.xml")
    assert b"MDC_ECG_CTL_VBL_ATTR_FILTER_NOTCH" in aecg_raw and 'notchfiltered="False"' in sierra_text(SIERRA_104)
    ours, theirs = decode_sierra(data(SIERRA_104)), decode_aecg(aecg_raw)
    assert ours.leads == theirs.leads and ours.fs == theirs.fs and ours.n_samples == theirs.n_samples
    lsb = (ours.signal.astype(np.float64) - theirs.signal) / 5e-3
    assert np.abs(lsb).max() <= 4.0 + 1e-3 and (np.abs(lsb) <= 1.0 + 1e-3).mean() >= 0.95
    spectrum = np.fft.rfft(lsb, axis=1)
    spectrum[:, np.fft.rfftfreq(lsb.shape[1], 1 / 500) >= 40] = 0
    assert np.abs(np.fft.irfft(spectrum, lsb.shape[1], axis=1)).max() <= 2.0


def test_sierra_demographics_and_time() -> None:
    ecg = decode_sierra(data(SIERRA_104))
    d = ecg.demographics
    assert (d.patient_id, d.birth_date, d.sex) == ("9999", "19760101", "F")
    assert ecg.acquired_at is not None and ecg.acquired_at.isoformat() == "2008-12-23T19:44:46"
    assert "9999" not in repr(ecg) + repr(d)


def _uncompressed(name: str) -> str:
    """The document with its parsed waveform stored uncompressed (limb leads as they are)."""
    ecg = decode_sierra(data(name))
    samples = np.round(ecg.signal.astype(np.float64) / 5e-3).astype("<i2").tobytes()
    text = re.sub(r'compressflag="True" compressmethod="XLI"', 'compressflag="False"', sierra_text(name))
    return re.sub(r"(<parsedwaveforms[^>]*>)[^<]*(</parsedwaveforms>)",
                  lambda m: m.group(1) + base64.b64encode(samples).decode() + m.group(2), text)


def test_uncompressed_parsed_waveform_equals_the_xli_one() -> None:
    plain = decode_sierra(_uncompressed(SIERRA_103).encode("utf-8"))
    assert np.abs(plain.signal - decode_sierra(data(SIERRA_103)).signal).max() < 1e-6


def test_utf16_is_recognised_with_or_without_bom() -> None:
    raw = data(SIERRA_104)
    assert sniff(raw[:4096]) == SIERRA and sniff(raw[2:4098]) == SIERRA
    assert sniff(sierra_text(SIERRA_104).encode("utf-16-be")[:4096]) == SIERRA


def test_no_parsed_waveform_names_format_and_version() -> None:
    text = re.sub(r"<parsedwaveforms.*?</parsedwaveforms>", "", sierra_text(SIERRA_104), flags=re.S)
    with pytest.raises(InvalidEcgError, match=r"^Philips SierraECG 1\.04: no parsed waveform$") as info:
        decode_message(SIERRA, text.encode("utf-16"))
    assert info.value.field == "parsedwaveforms"


def _lzw_bomb(n_codes: int) -> bytes:
    """An XLI chunk whose LZW codes grow the dictionary to its largest string, then repeat it."""
    codes = [0, *range(256, 1023), *[1022] * n_codes]
    bits = "".join(format(c, "010b") for c in codes)
    bits += "0" * (-len(bits) % 8)
    body = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return len(body).to_bytes(4, "little") + b"\x00\x00\x00\x00" + body


@pytest.mark.parametrize(("old", "new", "message"), [
    ("<documentversion>1.03<", "<documentversion>2.00<", "Philips SierraECG 2.00: unsupported document version"),
    ('durationperchannel="11000"', 'durationperchannel="99999999"', "samples per lead declared"),
    ('compressmethod="XLI"', 'compressmethod="ZIP"', "Compression unsupported: ZIP"),
    ("bomb", "", "XLI data expands past the declared samples"),
])
def test_bad_sierra_documents_are_answered_precisely(old: str, new: str, message: str) -> None:
    text = sierra_text(SIERRA_103)
    if old == "bomb":  # 1.5 KB of Base64 that would unpack to 2 MB
        bomb = base64.b64encode(_lzw_bomb(2000)).decode()
        text = re.sub(r"(<parsedwaveforms[^>]*>)[^<]*(<)", lambda m: m.group(1) + bomb + m.group(2), text)
    else:
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises((InvalidEcgError, UndecodableError), match=re.escape(message)):
        decode_message(SIERRA, text.encode("utf-8"))


def test_not_sierra_or_not_xml() -> None:
    with pytest.raises(UndecodableError, match="not a Philips SierraECG"):
        decode_sierra(b"<RestingECG/>")
    with pytest.raises(UndecodableError, match="not well-formed"):
        decode_sierra(b"<restingecgdata><unclosed></restingecgdata>")
    with pytest.raises(UndecodableError):  # entity expansion is refused before anything else
        decode_sierra(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><restingecgdata>&a;</restingecgdata>')


# --- SCP-ECG --------------------------------------------------------------------------------

def test_scp_equals_the_dicom_and_aecg_of_the_same_recording() -> None:
    """All three are 2.5 uV integers: the decodes must agree exactly (well within 1 LSB)."""
    scp = decode_file(TEST_DATA / "ecgtoolkit_Example.scp")
    dicom = decode_dicom_bytes(data("ecgtoolkit_Example.dcm"))
    assert scp.source == "scp" and scp.leads == dicom.leads == STANDARD_LEADS and scp.fs == dicom.fs
    assert np.abs(scp.signal - dicom.signal).max() <= 1e-6
    aecg = decode_aecg(shared_data("aecg", "hl7_2003-12_Example_aECG.xml").read_bytes())
    assert np.abs(scp.signal - aecg.signal).max() <= 1e-6


def test_scp_demographics_and_time() -> None:
    ecg = decode_scp(data("ecgtoolkit_Example.scp"))
    d = ecg.demographics
    assert (d.patient_id, d.patient_name, d.birth_date, d.sex) == ("SBJ-123", "Clark", "19530508", "M")
    assert ecg.acquired_at is not None and ecg.acquired_at.isoformat() == "2002-11-22T09:10:00"


@pytest.mark.parametrize(("diff", "huffman"), [(0, False), (1, False), (0, True), (1, True), (2, True)])
def test_custom_huffman_table_and_difference_modes(scp_ints: np.ndarray, diff: int, huffman: bool) -> None:
    ecg = decode_scp(scp_record(scp_ints, EIGHT, diff=diff, huffman=huffman))
    got = np.stack([ecg.lead(name) for name in EIGHT]) / 2.5e-3
    assert ecg.leads == STANDARD_LEADS and np.abs(got - scp_ints).max() < 1e-3
    assert ecg.demographics.patient_id == "SCP-TEST-1" and ecg.acquired_at is not None


def test_reference_beat_subtraction_is_added_back(scp_ints: np.ndarray) -> None:
    """Sections 4 and 5: the median beat is subtracted around each QRS; decoding restores it."""
    beat = scp_ints[:, 200:500]  # 300 samples, fiducial at its 101st
    qrs = [(f - 40, f, f + 120) for f in range(301, 4800, 700)]
    raw = scp_record(scp_ints, EIGHT, diff=1, reference=ReferenceBeat(beat, 101, qrs))
    ecg = decode_scp(raw)
    got = np.stack([ecg.lead(name) for name in EIGHT]) / 2.5e-3
    assert np.abs(got - scp_ints).max() < 1e-3


def test_scp_errors_name_format_and_reason(scp_ints: np.ndarray) -> None:
    real = data("ecgtoolkit_Example.scp")
    corrupted = bytearray(real)
    corrupted[20000] ^= 0xFF
    with pytest.raises(UndecodableError, match=r"^SCP-ECG 2\.0: CRC mismatch"):
        decode_message(SCP, bytes(corrupted))
    with pytest.raises(UndecodableError, match=r"^SCP-ECG 2\.0: .*declares 34144 bytes"):
        decode_message(SCP, real[:20000])
    huge = scp_record(scp_ints[:, :100], EIGHT, declared_samples=50_000_000)
    with pytest.raises(InvalidEcgError, match="lead 1 declares samples 1-50000000"):
        decode_message(SCP, huge)


def test_identify_names_what_is_not_an_ecg() -> None:
    assert identify(b"%PDF-1.7\n") == "a PDF document"
    assert identify(b"<?xml version='1.0'?><ClinicalDocument/>") == "an XML document <ClinicalDocument>"
    assert identify(data("ecgtoolkit_Example.scp")[:4096]) == "SCP-ECG 2.0"
    assert identify(data(SIERRA_104)[:4096]) == "Philips SierraECG 1.04"
    with pytest.raises(UndecodableError, match="unrecognised file format: a PDF document"):
        sniff_content_type(b"%PDF-1.7\n")


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(["ecgtoolkit_Example.scp", SIERRA_103]),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=6),
       cut=st.integers(0, 10**6))
def test_mutated_files_raise_only_validation_errors(name: str, flips: list[tuple[int, int]], cut: int) -> None:
    """Flipped bytes and truncation anywhere: an answer (our two error types), never a crash."""
    raw = bytearray(data(name))
    for at, mask in flips:
        raw[at % len(raw)] ^= mask
    mutated = bytes(raw[:max(1, cut % (len(raw) + 1))])
    with contextlib.suppress(InvalidEcgError, UndecodableError):
        decode_message(sniff_content_type(data(name)[:4096]), mutated)
