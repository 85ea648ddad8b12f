"""GE MUSE ``RestingECG`` XML export -> :class:`Ecg` (pure).

Each ``Waveform`` (type ``Rhythm`` or ``Median``) has ``SampleBase`` x 10^``SampleExponent``
Hz and one ``LeadData`` per lead: Base64 little-endian int16 samples, scaled by
``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits``. MUSE stores the 8 independent leads
(I, II, V1-V6); III/aVR/aVL/aVF are derived by :meth:`Ecg.with_standard_leads`. The
rhythm waveform is preferred; a median beat is only used when no rhythm is present.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from xml.etree.ElementTree import Element

import numpy as np

from ecg_gateway.ecg import Demographics, Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.aecg import FS_RANGE, MAX_SAMPLES, parse_xml
from ecg_gateway.inbound.leads import lead_from_label, unit_to_mv

_SEX = {"MALE": "M", "FEMALE": "F", "M": "M", "F": "F"}


def decode_muse(xml: bytes) -> Ecg:
    """Decode the rhythm waveform of a MUSE export to the 12 standard leads in mV."""
    root = parse_xml(xml, "MUSE document")
    if root.tag != "RestingECG":
        raise UndecodableError("not a GE MUSE RestingECG document")
    waveform = _pick_waveform(root)
    fs = _sampling_rate(waveform)
    leads: list[str] = []
    rows: list[np.ndarray] = []
    for lead_data in waveform.findall("LeadData"):
        name = lead_from_label(_text(lead_data, "LeadID") or "")
        if name is None or name in leads:
            continue
        leads.append(name)
        rows.append(_lead_mv(lead_data, name))
    if not leads:
        raise InvalidEcgError("no standard lead in the waveform", field="Waveform/LeadData")
    if len({len(r) for r in rows}) != 1:
        raise InvalidEcgError("leads have different sample counts", field="LeadData/WaveFormData")
    demographics, acquired_at = _demographics(root)
    ecg = Ecg(signal=np.stack(rows).astype(np.float32), fs=fs, leads=tuple(leads), source="muse",
              uid=None, acquired_at=acquired_at, demographics=demographics)
    return ecg.with_standard_leads()


def _text(el: Element, path: str) -> str | None:
    found = el.find(path)
    value = (found.text or "").strip() if found is not None else ""
    return value or None


def _pick_waveform(root: Element) -> Element:
    waveforms = root.findall("Waveform")
    if not waveforms:
        raise InvalidEcgError("no Waveform element", field="Waveform")
    by_type = {(_text(w, "WaveformType") or "").lower(): w for w in reversed(waveforms)}
    return by_type.get("rhythm") or by_type.get("median") or waveforms[0]


def _sampling_rate(waveform: Element) -> float:
    try:
        base = float(_text(waveform, "SampleBase") or "")
        exponent = int(_text(waveform, "SampleExponent") or "0")
    except ValueError as exc:
        raise InvalidEcgError("sample base/exponent not numbers", field="Waveform/SampleBase") from exc
    if not -3 <= exponent <= 3:
        raise InvalidEcgError("sample exponent out of range", field="Waveform/SampleExponent")
    fs = base * 10.0 ** exponent
    if not np.isfinite(fs) or not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise InvalidEcgError("sampling frequency out of range", field="Waveform/SampleBase")
    return fs


def _lead_mv(lead_data: Element, name: str) -> np.ndarray:
    field = f"LeadData[{name}]"
    try:
        raw = binascii.a2b_base64(_text(lead_data, "WaveFormData") or "", strict_mode=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEcgError("waveform data is not Base64", field=field + "/WaveFormData") from exc
    if not raw or len(raw) % 2 or len(raw) // 2 > MAX_SAMPLES:
        raise InvalidEcgError("waveform data empty, odd or too long", field=field + "/WaveFormData")
    declared_bytes = _text(lead_data, "LeadByteCountTotal")
    declared_samples = _text(lead_data, "LeadSampleCountTotal")
    if declared_bytes is not None and declared_bytes != str(len(raw)):
        raise InvalidEcgError("byte count does not match the data", field=field + "/LeadByteCountTotal")
    if declared_samples is not None and declared_samples != str(len(raw) // 2):
        raise InvalidEcgError("sample count does not match the data",
                              field=field + "/LeadSampleCountTotal")
    if (_text(lead_data, "LeadSampleSize") or "2") != "2":
        raise InvalidEcgError("only 2-byte samples are supported", field=field + "/LeadSampleSize")
    try:
        per_bit = float(_text(lead_data, "LeadAmplitudeUnitsPerBit") or "")
    except ValueError as exc:
        raise InvalidEcgError("amplitude per bit not a number",
                              field=field + "/LeadAmplitudeUnitsPerBit") from exc
    factor = unit_to_mv(_text(lead_data, "LeadAmplitudeUnits") or "")
    if factor is None or not np.isfinite(per_bit) or per_bit <= 0:
        raise InvalidEcgError("amplitude units missing or not a voltage",
                              field=field + "/LeadAmplitudeUnits")
    return np.frombuffer(raw, dtype="<i2").astype(np.float64) * (per_bit * factor)


def _muse_date(text: str | None) -> str | None:
    """MUSE dates are MM-DD-YYYY; return YYYYMMDD like HL7/DICOM, or None."""
    try:
        return datetime.strptime(text or "", "%m-%d-%Y").strftime("%Y%m%d")
    except ValueError:
        return None


def _demographics(root: Element) -> tuple[Demographics, datetime | None]:
    def text(path: str) -> str | None:
        return _text(root, path)

    last, first = text("PatientDemographics/PatientLastName"), text("PatientDemographics/PatientFirstName")
    name = "^".join(p for p in (last or "", first or "") if p) or None
    acquired = None
    date, time = text("TestDemographics/AcquisitionDate"), text("TestDemographics/AcquisitionTime")
    if date:
        try:
            acquired = datetime.strptime(f"{date} {time or '00:00:00'}", "%m-%d-%Y %H:%M:%S")
        except ValueError:
            acquired = None
    demographics = Demographics(
        patient_id=text("PatientDemographics/PatientID"), patient_name=name,
        birth_date=_muse_date(text("PatientDemographics/DateofBirth")),
        sex=_SEX.get((text("PatientDemographics/Gender") or "").upper()),
        location=text("TestDemographics/Location"),
        placer_order=text("Order/RequisitionNumber"),
    )
    return demographics, acquired
