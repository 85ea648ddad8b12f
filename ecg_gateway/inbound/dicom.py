"""DICOM waveform objects -> :class:`Ecg` (pure; no I/O beyond parsing bytes).

pydicom accepts waveforms a cart could never have made (0 or 1000 channels, NaN sampling
frequency, surplus bytes, 64-bit data; reliability.md finding 6), so every field the model
depends on is validated here explicitly. Failures raise InvalidEcgError naming the element,
never its value (values may be PHI).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from io import BytesIO
from typing import overload

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from ecg_gateway import composite
from ecg_gateway.ecg import STANDARD_LEADS, Demographics, Ecg
from ecg_gateway.errors import GatewayError, InvalidEcgError, UndecodableError

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"


class _Limits:
    def __init__(self, channels: int, samples: int, fs: tuple[float, float], kinds: set[tuple[int, str]]):
        self.channels, self.samples, self.fs, self.kinds = channels, samples, fs, kinds


# PS3.3 A.34.3.4 and sup. 237: per-class caps. Hemodynamic is only accepted behind a switch
# because real GE MAC carts store resting 12-leads under it.
LIMITS: dict[str, _Limits] = {
    TWELVE_LEAD: _Limits(13, 16384, (200.0, 1000.0), {(16, "SS")}),
    GENERAL_ECG: _Limits(24, 1 << 20, (200.0, 1000.0), {(16, "SS")}),
    AMBULATORY_ECG: _Limits(12, 1 << 24, (50.0, 1000.0), {(16, "SS"), (8, "SB")}),
    HEMODYNAMIC: _Limits(24, 1 << 20, (50.0, 1000.0), {(16, "SS")}),
}
ECG_SOP_CLASSES = (TWELVE_LEAD, GENERAL_ECG, AMBULATORY_ECG)

# CID 3001 lead codes: MDC "2:<n>" and legacy SCPECG "5.6.3-9-<n>" share the suffix numbers.
_LEAD_BY_SUFFIX = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
                   3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6"}
UNDEFINED_LENGTH = 0xFFFFFFFF
_UNITS_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}
# Digits and dots only (a real cart writes "..": accepted; we never use UIDs as paths).
_UID = re.compile(r"^[0-9][0-9.]*$")
_LABEL = re.compile(r"^(?:lead\s*)?(i{1,3}|avr|avl|avf|v[1-6])\b", re.IGNORECASE)


def decode_dicom_bytes(raw: bytes, *, accept_hemodynamic: bool = False) -> Ecg:
    """Parse a DICOM Part 10 file (or bare dataset) and decode its ECG."""
    try:
        ds = pydicom.dcmread(BytesIO(raw), force=True)
        ds.SOPClassUID  # noqa: B018 - force parsing of the top-level elements
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UndecodableError(f"not a decodable DICOM object ({type(exc).__name__})") from exc
    return decode_dataset(ds, accept_hemodynamic=accept_hemodynamic)


def decode_dataset(ds: Dataset, *, accept_hemodynamic: bool = False) -> Ecg:
    """Validate ``ds`` as an ECG waveform object and convert its rhythm group to mV.

    Raises only InvalidEcgError / UndecodableError: pydicom parses lazily and a malformed
    element raises whatever pydicom raises (fuzzing found BytesLengthException, InvalidDicomError
    ...) when first touched; that is "cannot be decoded", never an internal error.
    """
    try:
        return _decode_dataset(ds, accept_hemodynamic=accept_hemodynamic)
    except GatewayError:
        raise
    except Exception as exc:  # see docstring
        raise UndecodableError(f"dataset cannot be decoded ({type(exc).__name__})") from exc


def _decode_dataset(ds: Dataset, *, accept_hemodynamic: bool) -> Ecg:
    if is_truncated(ds):
        raise UndecodableError("dataset is truncated")
    sop_class = str(ds.get("SOPClassUID", ""))
    allowed = ECG_SOP_CLASSES + ((HEMODYNAMIC,) if accept_hemodynamic else ())
    if sop_class not in allowed:
        raise InvalidEcgError("SOP Class is not an accepted ECG waveform class", field="SOPClassUID")
    uid = validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    groups = ds.get("WaveformSequence")
    if not groups:
        raise InvalidEcgError("no Waveform Sequence", field="WaveformSequence")
    if len(groups) > 8:
        raise InvalidEcgError("too many multiplex groups", field="WaveformSequence")
    group = _rhythm_group(groups)
    signal, fs, leads = _decode_group(group, LIMITS[sop_class], little_endian=_little_endian(ds))
    ecg = Ecg(signal=signal, fs=fs, leads=leads, source="dicom", uid=uid,
              acquired_at=_acquired_at(ds), demographics=_demographics(ds))
    return ecg.with_standard_leads()


def is_truncated(ds: Dataset) -> bool:
    """True if a not-yet-parsed element holds fewer bytes than its header declares.

    pydicom silently accepts a dataset cut short mid-value; a cart that died mid-send must
    get "cannot understand", not a waveform complaint.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        elem = ds.get_item(tag)
        if (isinstance(elem, RawDataElement) and elem.value is not None
                and elem.length != UNDEFINED_LENGTH and len(elem.value) < elem.length):
            return True
    return False


def uid_nonconformance(uid: str) -> str | None:
    """Which PS3.5 9.1 rule a digits-and-dots UID breaks (an empty component, as in ``1.2..3``
    or ``1.2.3.``, or a leading zero, as in ``1.02``), or None. Such UIDs are accepted and
    the breach recorded (decisions.md, issue #29): real devices write them."""
    components = uid.split(".")
    if any(not c for c in components):
        return "empty component (PS3.5 9.1)"
    if any(len(c) > 1 and c.startswith("0") for c in components):
        return "leading zero in a component (PS3.5 9.1)"
    return None


def validate_uid(value: object, field: str) -> str:
    text = str(value or "").strip("\x00 ")
    if not text or len(text) > 64 or not _UID.match(text):
        raise InvalidEcgError(f"{field} is missing or not a valid UID", field=field)
    return text


def _little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is not None:
        return bool(ts.is_little_endian)
    return ds.is_little_endian if ds.is_little_endian is not None else True


def _rhythm_group(groups: list[Dataset]) -> Dataset:
    """The rhythm multiplex group: labelled RHYTHM, else not MEDIAN, else the longest."""
    def label(g: Dataset) -> str:
        return str(g.get("MultiplexGroupLabel", "")).upper()
    for g in groups:
        if "RHYTHM" in label(g):
            return g
    candidates = [g for g in groups if "MEDIAN" not in label(g)] or list(groups)
    return max(candidates, key=lambda g: int(g.get("NumberOfWaveformSamples", 0) or 0))


def _decode_group(group: Dataset, limits: _Limits, *, little_endian: bool) -> tuple[np.ndarray, float, tuple[str, ...]]:
    n_ch = _int(group, "NumberOfWaveformChannels")
    n_samples = _int(group, "NumberOfWaveformSamples")
    if not 1 <= n_ch <= limits.channels:
        raise InvalidEcgError("channel count out of range", field="NumberOfWaveformChannels")
    if not 1 <= n_samples <= limits.samples:
        raise InvalidEcgError("sample count out of range", field="NumberOfWaveformSamples")
    fs = _sampling_frequency(group, limits)
    bits = _int(group, "WaveformBitsAllocated")
    interp = str(group.get("WaveformSampleInterpretation", ""))
    if (bits, interp) not in limits.kinds:
        raise InvalidEcgError("unsupported bits allocated / sample interpretation",
                              field="WaveformSampleInterpretation")
    data = group.get("WaveformData")
    if data is None:
        raise InvalidEcgError("no Waveform Data", field="WaveformData")
    nbytes = bits // 8
    if len(data) != n_ch * n_samples * nbytes:
        raise InvalidEcgError("Waveform Data length does not match channels x samples",
                              field="WaveformData")
    dtype = np.dtype(("<" if little_endian else ">") + ("i2" if bits == 16 else "i1"))
    raw = np.frombuffer(data, dtype=dtype).reshape(n_samples, n_ch).T.astype(np.float64)
    channels = group.get("ChannelDefinitionSequence")
    if not channels or len(channels) != n_ch:
        raise InvalidEcgError("Channel Definition Sequence does not match the channel count",
                              field="ChannelDefinitionSequence")
    leads: list[str] = []
    rows: list[np.ndarray] = []
    for values, channel in zip(raw, channels, strict=True):
        name = lead_name(channel)
        if name is None or name in leads:
            continue  # not one of the 12 standard leads (e.g. V7, Frank), or a repeat
        leads.append(name)
        rows.append(values * _gain_mv(channel) + _float(channel, "ChannelBaseline", 0.0) * _units_mv(channel))
    if not leads:
        raise InvalidEcgError("no standard ECG lead identified", field="ChannelSourceSequence")
    return np.stack(rows).astype(np.float32), fs, tuple(leads)


def lead_name(channel: Dataset) -> str | None:
    """Lead identity: MDC code, then legacy SCPECG code, then the label text."""
    for source in channel.get("ChannelSourceSequence", []) or []:
        code = str(source.get("CodeValue", ""))
        for prefix in ("2:", "5.6.3-9-"):
            if code.startswith(prefix) and code[len(prefix):].isdigit():
                name = _LEAD_BY_SUFFIX.get(int(code[len(prefix):]))
                if name:
                    return name
        for text in (source.get("CodeMeaning", ""), channel.get("ChannelLabel", "")):
            name = _lead_from_text(str(text))
            if name:
                return name
    return _lead_from_text(str(channel.get("ChannelLabel", "")))


def _lead_from_text(text: str) -> str | None:
    match = _LABEL.match(text.strip())
    if not match:
        return None
    token = match.group(1).upper()
    canonical = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(token, token)
    return canonical if canonical in STANDARD_LEADS else None


def _units_mv(channel: Dataset) -> float:
    units = channel.get("ChannelSensitivityUnitsSequence")
    code = str(units[0].get("CodeValue", "")) if units else ""
    if code not in _UNITS_TO_MV:
        raise InvalidEcgError("channel sensitivity units missing or not a voltage",
                              field="ChannelSensitivityUnitsSequence")
    return _UNITS_TO_MV[code]


def _gain_mv(channel: Dataset) -> float:
    sensitivity = _float(channel, "ChannelSensitivity", None)
    correction = _float(channel, "ChannelSensitivityCorrectionFactor", 1.0)
    if sensitivity is None or sensitivity == 0 or correction == 0:
        raise InvalidEcgError("channel sensitivity missing or zero", field="ChannelSensitivity")
    # The value of one LSB and a calibration ratio (PS3.3 C.10.9.1.4.2): a sign would invert the
    # lead, and ST direction is what the acute class reads (issue #29: refused, not honoured)
    if sensitivity < 0:
        raise InvalidEcgError("ChannelSensitivity < 0 (PS3.3 C.10.9.1.4.2)", field="ChannelSensitivity")
    if correction is not None and correction < 0:
        raise InvalidEcgError("ChannelSensitivityCorrectionFactor < 0 (PS3.3 C.10.9.1.4.2)",
                              field="ChannelSensitivityCorrectionFactor")
    return sensitivity * correction * _units_mv(channel)


def _sampling_frequency(group: Dataset, limits: _Limits) -> float:
    fs = _float(group, "SamplingFrequency", None)
    low, high = limits.fs
    if fs is None or not low <= fs <= high:
        raise InvalidEcgError("sampling frequency missing or out of range", field="SamplingFrequency")
    return fs


@overload
def _float(ds: Dataset, keyword: str, default: float) -> float: ...
@overload
def _float(ds: Dataset, keyword: str, default: None) -> float | None: ...
def _float(ds: Dataset, keyword: str, default: float | None) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidEcgError(f"{keyword} is not a number", field=keyword) from exc
    if not math.isfinite(number):
        raise InvalidEcgError(f"{keyword} is not finite", field=keyword)
    return number


def _int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidEcgError(f"{keyword} missing or not an integer", field=keyword) from exc


def _acquired_at(ds: Dataset) -> datetime | None:
    text = str(ds.get("AcquisitionDateTime", "") or "")
    if not text:
        text = str(ds.get("ContentDate", "") or "") + str(ds.get("ContentTime", "") or "")
    text = text.split("+")[0].split("-")[0].split(".")[0]
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
        try:
            return datetime.strptime(text[: len(datetime.now().strftime(fmt))], fmt)
        except ValueError:
            continue
    return None


def _demographics(ds: Dataset) -> Demographics:
    """Patient and order identifiers; order numbers fall back to the Request Attributes and
    Referenced Request sequences, where carts that take a worklist put them."""
    def text(keyword: str, *items: Dataset) -> str | None:
        for item in (ds, *items):
            value = item.get(keyword)
            if value not in (None, ""):
                return str(value)
        return None

    requests = [*ds.get("RequestAttributesSequence", []), *ds.get("ReferencedRequestSequence", [])]
    name = text("PatientName")
    issuer = text("IssuerOfPatientID")
    patient_id = text("PatientID")
    return Demographics(
        patient_id=composite.join([[patient_id], [], [], [issuer or ""]]) if patient_id else None,
        patient_name=composite.join([[c] for c in name.split("=", 1)[0].split("^")]) if name else None,
        birth_date=text("PatientBirthDate"), sex=text("PatientSex"),
        location=composite.single(text("CurrentPatientLocation") or text("InstitutionalDepartmentName")),
        placer_order=text("PlacerOrderNumberImagingServiceRequest", *requests),
        filler_order=text("FillerOrderNumberImagingServiceRequest", *requests),
        accession=text("AccessionNumber", *requests),
    )
