"""Inbound HL7 v2 ECG messages (ORU^R01, ORU^W01, MDM^T02) -> :class:`Ecg` (pure).

Accepted OBX layouts (docs: the interface spec in the report of issue #3):

* Native waveform (HL7 v2 Chapter 7): OBX-2 ``CD`` = channel definition, ``NA`` / ``MA`` =
  waveform data; OBX-4 (sub-id) groups them, ``TS`` + ``TIM`` gives the start time. In a
  group, every CD repetition defines one channel in order; ``MA`` repetitions are sample
  times with one component per channel; ``NA`` holds one channel (the k-th NA OBX of a group
  is its k-th channel; with a single channel all NA OBX are concatenated). Several data OBX
  of one group are concatenated in order. value = raw x sensitivity x correction + baseline,
  in the CSU unit.
* Encapsulated (OBX-2 ``ED``, source^type^subtype^encoding^data, encoding Base64, Hex or A):
  a DICOM ECG object, an HL7 aECG document, a GE MUSE XML export, a Philips SierraECG XML
  export or an SCP-ECG record, recognised by content (:mod:`.decode`). Other ED payloads
  (PDF reports) are skipped.

Every path returns the same Ecg the DICOM decoder gives for the same recording (12 standard
leads in mV). Content errors raise :class:`Hl7ContentError` with the ERR location; PID,
PV1 and order numbers become :class:`Demographics` (stored, never logged).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from ecg_gateway import composite
from ecg_gateway.ecg import Demographics, Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.aecg import FS_RANGE, MAX_SAMPLES, parse_ts
from ecg_gateway.inbound.formats import DICOM, HL7V2, SNIFF_BYTES, decode_document, identify, sniff
from ecg_gateway.inbound.hl7_tokens import (
    Encoding,
    ErrLocation,
    Hl7ContentError,
    MessageHeader,
    Segment,
    component,
    decode_text,
    parse_header,
    parse_nm,
    parse_numbers,
    split_segments,
    unescape,
)
from ecg_gateway.inbound.leads import lead_from_label, unit_to_mv

__all__ = ["MessageHeader", "Hl7Message", "decode_hl7", "parse_header", "parse_message"]


@dataclass(slots=True)
class Hl7Message:
    header: MessageHeader
    segments: list[Segment]

    @property
    def enc(self) -> Encoding:
        return self.header.encoding

    def first(self, seg_id: str) -> Segment | None:
        return next((s for s in self.segments if s.id == seg_id), None)


def parse_message(raw: bytes) -> Hl7Message:
    """Header, charset decoding and segment split (Hl7HeaderError / Hl7EncodingError)."""
    header = parse_header(raw)
    return Hl7Message(header, split_segments(decode_text(raw, header), header.encoding))


def decode_hl7(raw: bytes) -> Ecg:
    """Decode the ECG an inbound HL7 message carries, with the message's demographics."""
    return decode_parsed(parse_message(raw))


def decode_parsed(msg: Hl7Message) -> Ecg:
    obx = [s for s in msg.segments if s.id == "OBX"]
    native = [s for s in obx if s.get(2).strip().upper() in ("CD", "NA", "MA")]
    ecg = _native_waveform(msg, native) if native else _encapsulated(msg, obx)
    if ecg is None:
        raise Hl7ContentError("no ECG waveform in the message", ErrLocation("OBX", None, 5), code=101)
    return replace(ecg, source="hl7", uid=msg.header.control_id,
                   demographics=_merge(demographics(msg), ecg.demographics))


# --- native waveform ----------------------------------------------------------------------

@dataclass(slots=True)
class _Channel:
    lead: str | None
    gain_mv: float
    offset_mv: float
    fs: float
    location: ErrLocation
    values: list[np.ndarray] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    channels: list[_Channel] = field(default_factory=list)
    data: list[Segment] = field(default_factory=list)


def _native_waveform(msg: Hl7Message, segments: list[Segment]) -> Ecg:
    groups: dict[str, _Group] = {}
    for seg in segments:
        group = groups.setdefault(seg.get(4).strip(), _Group())
        if seg.get(2).strip().upper() == "CD":
            group.channels += [_channel(rep, msg.enc, seg) for rep in seg.get(5).split(msg.enc.repetition)]
        else:
            group.data.append(seg)
    channels: list[_Channel] = []
    for group in groups.values():
        _fill_group(group, msg.enc)
        channels += group.channels
    used = [c for c in channels if c.lead is not None]
    if not used:
        raise Hl7ContentError("no standard ECG lead among the channel definitions",
                              ErrLocation("OBX", None, 5), code=101)
    fs_values = {c.fs for c in used}
    if len(fs_values) != 1:
        raise Hl7ContentError("channels have different sampling frequencies", used[0].location)
    rows: list[np.ndarray] = []
    leads: list[str] = []
    for chan in used:
        if chan.lead is None or chan.lead in leads:
            continue
        samples = np.concatenate(chan.values) if chan.values else np.empty(0)
        if samples.size == 0 or samples.size > MAX_SAMPLES:
            raise Hl7ContentError("channel without data or with too many samples", chan.location)
        leads.append(chan.lead)
        rows.append(samples * chan.gain_mv + chan.offset_mv)
    if len({r.size for r in rows}) != 1:
        raise Hl7ContentError("leads have different sample counts", ErrLocation("OBX", None, 5))
    ecg = Ecg(signal=np.stack(rows).astype(np.float32), fs=fs_values.pop(), leads=tuple(leads),
              source="hl7", acquired_at=_start_time(msg))
    return ecg.with_standard_leads()


def _channel(cd: str, enc: Encoding, seg: Segment) -> _Channel:
    """One CD value: WVI ^ WVS ^ CSU ^ CCP ^ sampling frequency ^ NR."""
    where = ErrLocation("OBX", seg.sequence, 5)
    comps = cd.split(enc.component)

    def sub(i: int, j: int) -> str:
        parts = comps[i - 1].split(enc.subcomponent) if i <= len(comps) else []
        return unescape(parts[j - 1], enc).strip() if j <= len(parts) else ""

    lead = lead_from_label(sub(1, 2)) or lead_from_label(sub(2, 1)) or lead_from_label(sub(1, 1))
    unit = unit_to_mv(sub(3, 2)) or unit_to_mv(sub(3, 3))
    if unit is None:
        raise Hl7ContentError("channel sensitivity unit missing or not a voltage",
                              replace(where, component=3))
    sensitivity = _nm(sub(3, 1), replace(where, component=3), default=None)
    correction = _nm(sub(4, 1), replace(where, component=4), default=1.0)
    baseline = _nm(sub(4, 2), replace(where, component=4), default=0.0)
    fs = _nm(sub(5, 1), replace(where, component=5), default=None)
    if sensitivity == 0 or correction == 0:
        raise Hl7ContentError("channel sensitivity is zero", replace(where, component=3))
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise Hl7ContentError("sampling frequency out of range", replace(where, component=5))
    return _Channel(lead, sensitivity * correction * unit, baseline * unit, fs, where)


def _nm(text: str, where: ErrLocation, default: float | None) -> float:
    if not text:
        if default is None:
            raise Hl7ContentError("required number missing", where, code=101)
        return default
    try:
        return parse_nm(text)
    except ValueError as exc:
        raise Hl7ContentError("not a valid number", where) from exc


def _fill_group(group: _Group, enc: Encoding) -> None:
    if group.data and not group.channels:
        raise Hl7ContentError("waveform data without a channel definition",
                              ErrLocation("OBX", group.data[0].sequence, 4))
    n_channels = len(group.channels)
    na = [s for s in group.data if s.get(2).strip().upper() == "NA"]
    if na and n_channels > 1 and len(na) != n_channels:
        raise Hl7ContentError("NA data segments do not match the channel count",
                              ErrLocation("OBX", na[0].sequence, 5))
    for seg in group.data:
        where = ErrLocation("OBX", seg.sequence, 5)
        text = seg.get(5)
        if seg.get(2).strip().upper() == "MA":
            matrix = _multiplexed(text, enc, n_channels, where)
            for chan, column in zip(group.channels, matrix.T, strict=True):
                chan.values.append(column)
        else:
            values = _numbers(text.replace(enc.repetition, enc.component), enc.component, where)[0]
            group.channels[0 if n_channels == 1 else na.index(seg)].values.append(values)


def _numbers(text: str, seps: str, where: ErrLocation) -> tuple[np.ndarray, np.ndarray]:
    try:
        return parse_numbers(text, seps)
    except ValueError as exc:
        # the ValueError text may quote sender data: keep it out of the ACK and the logs
        raise Hl7ContentError("waveform data is not a valid numeric array (HL7 NM)", where) from exc


def _multiplexed(text: str, enc: Encoding, n_channels: int, where: ErrLocation) -> np.ndarray:
    """MA: repetitions are sample times, components are channels; every row must be full."""
    values, kinds = _numbers(text, enc.component + enc.repetition, where)
    rep_at = np.flatnonzero(kinds == 1)
    expected = np.arange(1, rep_at.size + 1) * n_channels - 1
    if values.size % n_channels or not np.array_equal(rep_at, expected):
        raise Hl7ContentError("multiplexed sample does not have one value per channel", where)
    return values.reshape(-1, n_channels)


def _start_time(msg: Hl7Message) -> datetime | None:
    for seg in msg.segments:
        if seg.id == "OBX" and seg.get(2).strip().upper() in ("TS", "DTM"):
            return parse_ts(component(seg.get(5), msg.enc, 1))
    obr = msg.first("OBR")
    return parse_ts(component(obr.get(7), msg.enc, 1)) if obr else None


# --- encapsulated documents ---------------------------------------------------------------

def _encapsulated(msg: Hl7Message, obx: list[Segment]) -> Ecg | None:
    """The first ED payload that is an ECG document; PDFs and other attachments are skipped
    (and named in the AE when nothing else is there)."""
    skipped: list[str] = []
    for seg in obx:
        if seg.get(2).strip().upper() != "ED":
            continue
        where = ErrLocation("OBX", seg.sequence, 5)
        payload = _ed_bytes(seg.get(5), msg.enc, where)
        content_type = _payload_type(payload, component(seg.get(5), msg.enc, 3))
        if content_type is None:
            skipped.append(identify(payload[:SNIFF_BYTES]))
            continue
        try:
            return decode_document(content_type, payload)
        except (InvalidEcgError, UndecodableError) as exc:
            embedded = f" ({exc.field})" if isinstance(exc, InvalidEcgError) and exc.field else ""
            raise Hl7ContentError(f"encapsulated ECG: {exc}{embedded}", where) from exc
    if skipped:
        raise Hl7ContentError(f"no ECG waveform in the message (ED: {', '.join(skipped)})",
                              ErrLocation("OBX", None, 5), code=101)
    return None


def _ed_bytes(value: str, enc: Encoding, where: ErrLocation) -> bytes:
    comps = value.split(enc.repetition, 1)[0].split(enc.component)
    encoding = comps[3].strip().upper() if len(comps) > 3 else ""
    data = unescape(comps[4], enc) if len(comps) > 4 else ""
    try:
        if encoding == "BASE64":
            return binascii.a2b_base64(data)
        if encoding == "HEX":
            return bytes.fromhex(data)
    except (binascii.Error, ValueError) as exc:
        raise Hl7ContentError("encapsulated data does not match its encoding",
                              replace(where, component=5)) from exc
    if encoding in ("A", "NONE", ""):
        return data.encode("utf-8")
    raise Hl7ContentError("unsupported encapsulated data encoding", replace(where, component=4), code=103)


def _payload_type(payload: bytes, subtype: str) -> str | None:
    """The ECG document type of an ED payload: by content, else DICOM when the subtype says
    so (a dataset without the Part 10 preamble). A message inside a message is not an ECG."""
    found = sniff(payload[:SNIFF_BYTES])
    if found is not None and found != HL7V2:
        return found
    return DICOM if subtype.strip().upper() == "DICOM" else None


# --- identifiers ----------------------------------------------------------------------------

def demographics(msg: Hl7Message) -> Demographics:
    """PID, PV1 and order identifiers (ORC, else OBR, else TXA for MDM). PHI: never log."""
    enc = msg.enc
    pid, pv1 = msg.first("PID"), msg.first("PV1")
    orc, obr, txa = msg.first("ORC"), msg.first("OBR"), msg.first("TXA")

    def comp(seg: Segment | None, n: int, i: int = 1) -> str | None:
        return (component(seg.get(n), enc, i).strip() or None) if seg else None

    def joined(seg: Segment | None, n: int) -> str | None:
        """A composite (first repetition) with every component kept (ecg_gateway.composite)."""
        if seg is None:
            return None
        first_rep = seg.get(n).split(enc.repetition, 1)[0]
        return composite.join([[unescape(sub, enc) for sub in comp.split(enc.subcomponent)]
                               for comp in first_rep.split(enc.component)])

    birth = comp(pid, 7)
    return Demographics(
        patient_id=joined(pid, 3), patient_name=joined(pid, 5),
        birth_date=birth[:8] if birth else None, sex=comp(pid, 8), location=joined(pv1, 3),
        placer_order=comp(orc, 2) or comp(obr, 2) or comp(txa, 14),
        filler_order=comp(orc, 3) or comp(obr, 3) or comp(txa, 15),
        accession=comp(obr, 18),
    )


def _merge(primary: Demographics, fallback: Demographics) -> Demographics:
    """HL7 identifiers win (they file the result on the order); the document fills gaps."""
    return Demographics(**{k: v if v is not None else getattr(fallback, k)
                           for k, v in primary.as_dict().items()})
