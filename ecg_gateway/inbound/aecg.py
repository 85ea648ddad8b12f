"""HL7 v3 annotated ECG (aECG, FDA ``AnnotatedECG`` XML) -> :class:`Ecg` (pure).

Layout (formats.md 5.4): ``component/series`` (code RHYTHM; ``derivedSeries`` holds median
beats and is ignored) -> ``component/sequenceSet`` -> ``component/sequence`` with a time
sequence (TIME_ABSOLUTE ``GLIST_TS`` or TIME_RELATIVE ``GLIST_PQ``: ``increment`` = sampling
interval) and one ``SLIST_PQ`` sequence per lead: value = origin + scale x digit. XML from
outside is parsed with defusedxml (no entity expansion, no external references).
"""

from __future__ import annotations

from datetime import datetime
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ecg_gateway.ecg import Demographics, Ecg
from ecg_gateway.errors import InvalidEcgError, UndecodableError
from ecg_gateway.inbound.leads import lead_from_label, unit_to_mv

NS = "{urn:hl7-org:v3}"
_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
FS_RANGE = (50.0, 2000.0)
MAX_SAMPLES = 1 << 20


def parse_xml(xml: bytes, what: str) -> Element:
    """Parse untrusted XML safely; any failure is UndecodableError (no PHI in the text)."""
    try:
        return fromstring(xml, forbid_dtd=False)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise UndecodableError(f"{what} is not well-formed, safe XML ({type(exc).__name__})") from exc


def decode_aecg(xml: bytes) -> Ecg:
    """Decode the rhythm series of an aECG document to the 12 standard leads in mV."""
    root = parse_xml(xml, "aECG document")
    if root.tag != NS + "AnnotatedECG":
        raise UndecodableError("not an HL7 AnnotatedECG document")
    series = _rhythm_series(root)
    fs, leads, rows = _sequence_set(series)
    ecg = Ecg(signal=np.stack(rows).astype(np.float32), fs=fs, leads=tuple(leads), source="aecg",
              uid=_uid(root), acquired_at=_acquired_at(root), demographics=_demographics(root))
    return ecg.with_standard_leads()


def _rhythm_series(root: Element) -> Element:
    series = root.findall(f"{NS}component/{NS}series")
    if not series:
        raise InvalidEcgError("no waveform series", field="component/series")
    for s in series:
        if _code(s) == "RHYTHM":
            return s
    return series[0]


def _code(el: Element) -> str:
    code = el.find(NS + "code")
    return (code.get("code") or "") if code is not None else ""


def _sequence_set(series: Element) -> tuple[float, list[str], list[np.ndarray]]:
    """The first sequenceSet that carries standard leads: sampling rate, names, mV rows."""
    for seq_set in series.findall(f"{NS}component/{NS}sequenceSet"):
        fs: float | None = None
        leads: list[str] = []
        rows: list[np.ndarray] = []
        for seq in seq_set.findall(f"{NS}component/{NS}sequence"):
            code = _code(seq)
            if code.startswith("TIME_"):
                fs = _sampling_rate(seq)
                continue
            name = lead_from_label(code)
            if name is None or name in leads:
                continue
            leads.append(name)
            rows.append(_lead_values(seq, code))
        if leads:
            if fs is None:
                raise InvalidEcgError("no time sequence in the sequence set", field="sequence/TIME")
            if len({len(r) for r in rows}) != 1:
                raise InvalidEcgError("leads have different sample counts", field="sequence/digits")
            return fs, leads, rows
    raise InvalidEcgError("no ECG lead sequence in the rhythm series", field="sequenceSet")


def _sampling_rate(seq: Element) -> float:
    inc = seq.find(f"{NS}value/{NS}increment")
    if inc is None:
        raise InvalidEcgError("time sequence has no increment", field="sequence/increment")
    step = _number(inc.get("value"), "sequence/increment")
    unit = _TIME_UNITS_S.get((inc.get("unit") or "s").strip())
    if unit is None or step <= 0:
        raise InvalidEcgError("time increment unit or value invalid", field="sequence/increment")
    fs = 1.0 / (step * unit)
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise InvalidEcgError("sampling frequency out of range", field="sequence/increment")
    return round(fs, 6)


def _lead_values(seq: Element, code: str) -> np.ndarray:
    value = seq.find(NS + "value")
    field = f"sequence[{code}]/value"
    if value is None:
        raise InvalidEcgError("lead sequence has no value", field=field)
    origin, origin_mv = _pq(value.find(NS + "origin"), field + "/origin", default=0.0)
    scale, scale_mv = _pq(value.find(NS + "scale"), field + "/scale", default=None)
    digits_el = value.find(NS + "digits")
    text = (digits_el.text or "") if digits_el is not None else ""
    tokens = text.split()
    try:
        digits = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError as exc:
        raise InvalidEcgError("lead digits are not numbers", field=field + "/digits") from exc
    if digits.size == 0 or digits.size > MAX_SAMPLES:
        raise InvalidEcgError("lead digits empty or too many", field=field + "/digits")
    if not np.isfinite(digits).all():
        raise InvalidEcgError("lead digits not finite", field=field + "/digits")
    return origin * origin_mv + digits * (scale * scale_mv)


def _pq(el: Element | None, field: str, default: float | None) -> tuple[float, float]:
    """A physical quantity as (value, mV per unit)."""
    if el is None:
        if default is None:
            raise InvalidEcgError("missing quantity", field=field)
        return default, 1.0
    value = _number(el.get("value"), field)
    factor = unit_to_mv(el.get("unit") or "")
    if factor is None:
        raise InvalidEcgError("unit is not a voltage", field=field)
    if default is None and value == 0:
        raise InvalidEcgError("scale is zero", field=field)
    return value, factor


def _number(text: str | None, field: str) -> float:
    try:
        value = float(text or "")
    except ValueError as exc:
        raise InvalidEcgError("not a number", field=field) from exc
    if not np.isfinite(value):
        raise InvalidEcgError("not finite", field=field)
    return value


def _uid(root: Element) -> str | None:
    el = root.find(NS + "id")
    if el is None:
        return None
    root_id, ext = el.get("root"), el.get("extension")
    return f"{root_id}^{ext}" if root_id and ext else (root_id or ext)


def parse_ts(text: str | None) -> datetime | None:
    """An HL7 TS (YYYYMMDD[HH[MM[SS[.S]]]][+ZZZZ]) as a naive datetime, or None."""
    if not text:
        return None
    digits = text.split("+")[0].split("-")[0].split(".")[0]
    for fmt, width in (("%Y%m%d%H%M%S", 14), ("%Y%m%d%H%M", 12), ("%Y%m%d%H", 10), ("%Y%m%d", 8)):
        if len(digits) >= width:
            try:
                return datetime.strptime(digits[:width], fmt)
            except ValueError:
                return None
    return None


def _acquired_at(root: Element) -> datetime | None:
    for path in ("effectiveTime/center", "effectiveTime/low"):
        el = root.find("/".join(NS + p for p in path.split("/")))
        if el is not None and el.get("value"):
            return parse_ts(el.get("value"))
    return None


def _demographics(root: Element) -> Demographics:
    subject = root.find(".//" + NS + "trialSubject")
    if subject is None:
        return Demographics()
    ident = subject.find(NS + "id")
    person = subject.find(NS + "subjectDemographicPerson")

    def text(path: str, attr: str | None = None) -> str | None:
        el = person.find(NS + path) if person is not None else None
        if el is None:
            return None
        value = el.get(attr) if attr else " ".join((el.text or "").split())
        return value or None

    return Demographics(
        patient_id=(ident.get("extension") or None) if ident is not None else None,
        patient_name=text("name"), birth_date=text("birthTime", "value"),
        sex=text("administrativeGenderCode", "code"),
    )
