"""GE MUSE XML decoding: real exports, rhythm before median, units, broken data."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from ecg_gateway.ecg import STANDARD_LEADS
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.decode import MUSE, decode_message, sniff_content_type
from ecg_gateway.inbound.muse import decode_muse
from tests.support.paths import shared_data

FILES = ["MUSE_20200923_093504_79000_example.xml", "easyRecg_muse_ecg1.xml",
         "easyRecg_muse_ecg2.xml", "easyRecg_muse_ecg3.xml", "musePHI_muse_ecg1.xml"]


def muse(name: str = FILES[0]) -> bytes:
    return shared_data("vendor-xml", "ge-muse", name).read_bytes()


def first_rhythm_lead_i(xml: bytes) -> np.ndarray:
    """Lead I of the Rhythm waveform, decoded independently with a regex (4.88 uV/bit)."""
    rhythm = xml[xml.index(b"<WaveformType>Rhythm</WaveformType>"):]
    data = re.search(rb"<LeadID>I</LeadID>.*?<WaveFormData>(.*?)</WaveFormData>", rhythm, re.S)
    assert data is not None
    return np.frombuffer(base64.b64decode(b"".join(data.group(1).split())), "<i2") * 4.88e-3


@pytest.mark.parametrize("name", FILES)
def test_real_exports_decode_rhythm(name: str) -> None:
    xml = muse(name)
    ecg = decode_muse(xml)
    assert ecg.leads == STANDARD_LEADS and ecg.fs == 500.0 and ecg.n_samples == 5000
    assert np.allclose(ecg.lead("I"), first_rhythm_lead_i(xml), atol=1e-6)
    # III/aVR/aVL/aVF are derived from the 8 stored leads
    assert np.allclose(ecg.lead("aVF"), ecg.lead("II") - ecg.lead("I") / 2, atol=1e-6)
    assert decode_message(MUSE, xml).n_samples == 5000
    assert sniff_content_type(xml[:4096]) == MUSE


def test_demographics() -> None:
    ecg = decode_muse(muse())
    d = ecg.demographics
    assert (d.patient_id, d.patient_name, d.birth_date, d.sex) == (
        "201700237", "MUSE^TESTONE", "19800610", "M")
    assert d.placer_order == "272924610"
    assert ecg.acquired_at is not None and ecg.acquired_at.isoformat() == "2020-09-22T09:03:32"


def test_median_used_only_without_rhythm() -> None:
    xml = muse(FILES[1])
    text = xml.decode("latin-1")
    first = text.index("<Waveform>")
    second = text.index("<Waveform>", first + 1)
    assert "<WaveformType>Rhythm" in text[second:second + 80]
    median_only = text[:second] + text[text.index("</Waveform>", second) + len("</Waveform>"):]
    ecg = decode_muse(median_only.encode("latin-1"))
    assert ecg.n_samples == 600  # the median beat


def test_units_per_bit_and_units() -> None:
    xml = muse(FILES[1])
    doubled = xml.replace(b"<LeadAmplitudeUnitsPerBit>4.88<", b"<LeadAmplitudeUnitsPerBit>9.76<")
    assert np.allclose(decode_muse(doubled).signal, 2 * decode_muse(xml).signal, atol=1e-5)
    millivolts = xml.replace(b">MICROVOLTS<", b">MILLIVOLTS<")
    assert np.allclose(decode_muse(millivolts).signal, 1000 * decode_muse(xml).signal, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("old", "new"), [
    (b"<LeadByteCountTotal>10000<", b"<LeadByteCountTotal>9998<"),
    (b"<LeadSampleCountTotal>5000<", b"<LeadSampleCountTotal>4000<"),
    (b">MICROVOLTS<", b">MMHG<"),
    (b"<SampleBase>500<", b"<SampleBase>NaN<"),
    (b"<SampleBase>500<", b"<SampleBase>0<"),
    (b"<LeadAmplitudeUnitsPerBit>4.88<", b"<LeadAmplitudeUnitsPerBit>x<"),
])
def test_invalid_content(old: bytes, new: bytes) -> None:
    xml = muse(FILES[1])
    assert old in xml
    tampered = xml.replace(old, new)
    with pytest.raises(InvalidEcgError):
        decode_muse(tampered)


def test_not_muse() -> None:
    with pytest.raises(UndecodableError):
        decode_muse(b"<AnnotatedECG/>")
    with pytest.raises(UndecodableError):
        decode_muse(b"\x00\x01 not xml")
    with pytest.raises(InvalidEcgError):
        decode_muse(b"<RestingECG></RestingECG>")
