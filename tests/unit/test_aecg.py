"""HL7 aECG XML decoding: the three real files, equality with DICOM, unsafe and bad XML."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import STANDARD_LEADS
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.aecg import decode_aecg
from ecg_gateway.inbound.decode import AECG, decode_message, sniff_content_type
from ecg_gateway.inbound.dicom import decode_dicom_bytes
from tests.support.paths import shared_data

EXAMPLE = "hl7_2003-12_Example_aECG.xml"


@pytest.fixture(scope="module")
def example() -> bytes:
    return shared_data("aecg", EXAMPLE).read_bytes()


@pytest.mark.parametrize(("name", "fs", "samples"), [
    (EXAMPLE, 500.0, 5000),
    ("calecg2_hl7aecg-Example2.xml", 1000.0, 10000),
    ("philips_ad4d3d80-d165_1-04_converted.xml", 500.0, 5500),
])
def test_real_files_decode_rhythm_series(name: str, fs: float, samples: int) -> None:
    xml = shared_data("aecg", name).read_bytes()
    ecg = decode_aecg(xml)
    assert ecg.leads == STANDARD_LEADS and ecg.fs == fs and ecg.n_samples == samples
    assert ecg.source == "aecg" and ecg.uid
    typical = np.median(np.percentile(np.abs(ecg.signal), 99, axis=1))
    assert 0.1 < typical < 5.0  # mV, not uV or V (the Philips V3 is saturated: median over leads)
    # limb leads as stored obey Einthoven within a few quanta (before Philips' calibration pulse)
    n = int(10 * fs)
    assert np.abs(ecg.lead("III")[:n] - (ecg.lead("II") - ecg.lead("I"))[:n]).max() < 0.05
    assert decode_message(AECG, xml).n_samples == samples
    assert sniff_content_type(xml[:4096]) == AECG


def test_equals_dicom_of_the_same_recording(example: bytes) -> None:
    dicom = decode_dicom_bytes(shared_data("dicom-ecg", "ecgtoolkit_Example.dcm").read_bytes())
    ecg = decode_aecg(example)
    assert ecg.leads == dicom.leads and ecg.fs == dicom.fs
    assert np.abs(ecg.signal - dicom.signal).max() <= 2.5e-3  # one 2.5 uV quantum


def test_demographics_and_time(example: bytes) -> None:
    ecg = decode_aecg(example)
    d = ecg.demographics
    assert (d.patient_id, d.patient_name, d.birth_date, d.sex) == ("SBJ-123", "Clark", "19530508", "M")
    assert ecg.acquired_at is not None and ecg.acquired_at.isoformat() == "2002-11-22T09:10:00"
    assert "Clark" not in repr(ecg) + repr(d)


def test_scale_units_are_honoured(example: bytes) -> None:
    in_mv = example.replace(b'<scale value="2.5" unit="uV"/>', b'<scale value="0.0025" unit="mV"/>')
    assert np.allclose(decode_aecg(in_mv).signal, decode_aecg(example).signal, atol=1e-6)


@pytest.mark.parametrize(("old", "new", "field"), [
    (b'<increment value="0.002" unit="s"/>', b'<increment value="0" unit="s"/>', "sequence/increment"),
    (b'<increment value="0.002" unit="s"/>', b'<increment value="NaN" unit="s"/>', "sequence/increment"),
    (b'<scale value="2.5" unit="uV"/>', b'<scale value="2.5" unit="mmHg"/>', None),
    (b"<digits> -2 -2", b"<digits> x -2", None),
    (b"<digits> -2 -2", b"<digits> -2 -2 -2", "sequence/digits"),  # one lead a sample longer
])
def test_invalid_content(example: bytes, old: bytes, new: bytes, field: str | None) -> None:
    assert old in example
    with pytest.raises(InvalidEcgError) as info:
        decode_aecg(example.replace(old, new, 1))
    if field:
        assert info.value.field == field


def test_not_aecg_or_not_xml() -> None:
    with pytest.raises(UndecodableError):
        decode_aecg(b"<RestingECG/>")
    with pytest.raises(UndecodableError):
        decode_aecg(b"<AnnotatedECG xmlns='urn:hl7-org:v3'>")
    with pytest.raises(InvalidEcgError):
        decode_aecg(b"<AnnotatedECG xmlns='urn:hl7-org:v3'/>")


def test_t15_entity_expansion_and_external_entities_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
            b'<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">]>'
            b'<AnnotatedECG xmlns="urn:hl7-org:v3"><id root="&y;"/></AnnotatedECG>')
    secret = tmp_path / "secret.txt"
    secret.write_text("ZZCANARY")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY s SYSTEM "file://{secret}">]>'
           '<AnnotatedECG xmlns="urn:hl7-org:v3"><id root="&s;"/></AnnotatedECG>').encode()
    for doc in (bomb, xxe):
        with pytest.raises(UndecodableError) as info:
            decode_aecg(doc)
        assert "ZZCANARY" not in str(info.value)
