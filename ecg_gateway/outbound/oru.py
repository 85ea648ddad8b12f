"""ORU^R01 (HL7 v2.5.1) composer for one triage result: pure, escape-correct, fast.

hl7apy needs tens of milliseconds to build or parse a message, too slow for the acute
path, so the message is written here as ER7 text with every copied value escaped
(``| ^ ~ \\ &`` and control characters); tests parse and validate the output with hl7apy
and unescape it with python-hl7. Segment layout (the interface spec)::

    MSH  ORU^R01^ORU_R01, MSH-10 = the outbound row's control id, MSH-18 UNICODE UTF-8
    PID  PID-3 patient id (CX), PID-5 name, PID-7 birth date, PID-8 sex (from the inbound ECG)
    PV1  only when a location is known (PV1-2 U, PV1-3 location components)
    ORC  RE, placer, filler (else accession), A
    OBR  11524-6^EKG study^LN, OBR-7 acquisition, OBR-18 accession, OBR-22 now, EC,
         P (C in the correction that brings a late PDF), OBR-27 priority
    TQ1  TQ1-9 S (acute) or R
    OBX  CWE category (local code system 99ECGGW), OBX-8 AA/A/N
    OBX  NM probability, one per category (omitted when the model did not run)
    OBX  NM measurements (LOINC, UCUM), one per measured value
    OBX  CWE statement + NM its probability, per statement (OBX-4 groups the pair)
    OBX  ST 8601-7^EKG impression^LN
    NTE  automated triage, preliminary, a physician must confirm
    OBX  ED 11524-6 PDF of the 12-lead tracing (when attached)
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ecg_gateway import composite
from ecg_gateway.ecg import UNINTERPRETABLE, Demographics, TriageCategory
from ecg_gateway.errors import GatewayError
from ecg_gateway.evidence import DecisionRule, Measurements, Statement, statements_from_json

if TYPE_CHECKING:
    from ecg_gateway.config import OutboundConfig
    from ecg_gateway.store.models import Message, Result

LOCAL_SYSTEM = "99ECGGW"
STATEMENT_SYSTEM = "99SCPECG"  # SCP-ECG statement acronyms as PTB-XL uses them (AFIB, IMI, ...)
EKG_STUDY = "11524-6^EKG study^LN"
EKG_IMPRESSION = "8601-7^EKG impression^LN"
STATEMENT = f"ECGGW-STMT^ECG statement^{LOCAL_SYSTEM}"
STATEMENT_P = f"ECGGW-STMT-P^Probability of the statement^{LOCAL_SYSTEM}"
MEASURED_BY = f"ECGGW-GLOBAL^Global 12-lead median-beat measurement^{LOCAL_SYSTEM}"
#: Measurements field -> (OBX-3, OBX-6 UCUM unit, OBX-17 method when it is not MEASURED_BY)
MEASUREMENT_OBX: dict[str, tuple[str, str, str]] = {
    "heart_rate_bpm": ("8867-4^Heart rate^LN", "/min^^UCUM", ""),
    "pr_ms": ("8625-6^P-R interval^LN", "ms^^UCUM", ""),
    "qrs_ms": ("8633-0^QRS duration^LN", "ms^^UCUM", ""),
    "qt_ms": ("8634-8^Q-T interval^LN", "ms^^UCUM", ""),
    "qtc_bazett_ms": ("8636-3^Q-T interval corrected^LN", "ms^^UCUM",
                      f"ECGGW-BAZETT^QTc by Bazett (QT/RR^1/2)^{LOCAL_SYSTEM}"),
    "qtc_fridericia_ms": (f"ECGGW-QTCF^Q-T interval corrected, Fridericia^{LOCAL_SYSTEM}",
                          "ms^^UCUM", f"ECGGW-FRIDERICIA^QTc by Fridericia (QT/RR^1/3)^{LOCAL_SYSTEM}"),
    "p_axis_deg": ("8626-4^P wave axis^LN", "deg^^UCUM", ""),
    "qrs_axis_deg": ("8632-7^QRS axis^LN", "deg^^UCUM", ""),
    "t_axis_deg": ("8638-9^T wave axis^LN", "deg^^UCUM", ""),
}
#: OBR-25 result status -> ORC-5 order status (table 0038 "A": some results available; the
#: physician's confirmation, the final result, is still to come)
ORDER_STATUS = {"P": "A", "C": "A"}

#: category -> (display text, OBX-8 abnormal flag, probability OBX-3 code)
CATEGORIES: dict[str, tuple[str, str, str]] = {
    TriageCategory.NORMAL.value: ("Normal", "N", "ECGGW-P-NORMAL"),
    TriageCategory.ABNORMAL_NOT_ACUTE.value: ("Abnormal, not acute", "A", "ECGGW-P-ABNORMAL"),
    TriageCategory.SUBACUTE.value: ("Subacute", "A", "ECGGW-P-SUBACUTE"),
    TriageCategory.ACUTE.value: ("Acute", "AA", "ECGGW-P-ACUTE"),
    UNINTERPRETABLE: ("Uninterpretable (insufficient signal quality)", "", ""),
}
_CONTROL_ID = re.compile(r"[A-Za-z0-9._-]{1,20}")
_HL7_DATE = re.compile(r"\d{4}(?:\d{2}){0,5}")
_SEXES = frozenset("FMOUAN")
# HL7 v2 escapes (2.7.4); C0 controls (CR would end the segment, VT/FS the MLLP frame) as \Xhh\.
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_ESCAPES.update({chr(c): f"\\X{c:02X}\\" for c in (*range(0x20), 0x7F)})
_TABLE = str.maketrans(_ESCAPES)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_control_id(now_ms: int | None = None) -> str:
    """A fresh MSH-10, unique across databases, gateways and rebuilds without coordination:
    ``ECGGW`` + 10 Crockford base32 digits of the Unix time in ms + 5 of 25 random bits
    (20 characters, so receivers that keep the v2.3 limit of 20 accept it; time-ordered)."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    value = (stamp << 25) | secrets.randbits(25)
    digits = "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(70, -1, -5))
    return "ECGGW" + digits[-15:]


class ComposeError(GatewayError):
    """The result cannot be expressed as a valid ORU (bad control id, unknown category)."""


@dataclass(frozen=True, slots=True)
class ResultView:
    """What the composer needs from a ``results`` row."""

    category: str
    p_normal: float | None
    p_abnormal_not_acute: float | None
    p_subacute: float | None
    p_acute: float | None
    model_id: str
    model_sha256: str
    quality: dict[str, Any] = field(default_factory=dict)
    statements: tuple[Statement, ...] = ()
    measurements: Measurements = field(default_factory=Measurements)
    decision: DecisionRule | None = None

    @classmethod
    def from_row(cls, row: Result) -> ResultView:
        return cls(category=row.category, p_normal=row.p_normal,
                   p_abnormal_not_acute=row.p_abnormal_not_acute, p_subacute=row.p_subacute,
                   p_acute=row.p_acute, model_id=row.model_id, model_sha256=row.model_sha256,
                   quality=dict(row.quality or {}),
                   statements=statements_from_json(row.statements),
                   measurements=Measurements.from_json(row.measurements),
                   decision=DecisionRule.from_json(row.decision))

    def probability(self, category: str) -> float | None:
        value: float | None = getattr(self, f"p_{category}", None)
        return value


@dataclass(frozen=True, slots=True)
class MessageView:
    """What the composer needs from a ``messages`` row (plus the decoded acquisition time).

    ``patient_name`` and ``location`` are '^'-joined unescaped components; the name is in
    HL7 XPN order (family^given^middle^suffix^prefix): :meth:`from_row` converts a DICOM
    PN (…^prefix^suffix). Every other identifier is one value.
    """

    demographics: Demographics
    ecg_uid: str | None
    received_at: datetime
    acquired_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Message, acquired_at: datetime | None = None) -> MessageView:
        ids = {k: str(v) for k, v in (row.identifiers or {}).items()
               if v is not None and k in Demographics.__dataclass_fields__}
        name = ids.get("patient_name")
        if name is not None and row.content_type == "application/dicom":
            ids["patient_name"] = dicom_pn_to_xpn(name)
        received = row.received_at
        if received.tzinfo is None:  # SQLite hands back the UTC wall clock without a zone
            received = received.replace(tzinfo=UTC)
        return cls(demographics=Demographics(**ids), ecg_uid=row.ecg_uid, received_at=received,
                   acquired_at=acquired_at)


def dicom_pn_to_xpn(name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix, alphabetic group only) -> XPN order."""
    parts = name.split("=", 1)[0].split("^")
    if len(parts) >= 4:
        prefix = parts[3]
        suffix = parts[4] if len(parts) > 4 else ""
        parts = [*parts[:3], suffix, prefix]
    return "^".join(parts).rstrip("^")


def escape(value: str | None) -> str:
    """Escape one value so every HL7 delimiter in it is data."""
    return value.translate(_TABLE) if value else ""


def escape_composite(value: str) -> str:
    """A stored composite (ecg_gateway.composite: PID-3 CX, PID-5 name, PV1-3 location)
    keeps its components and subcomponents; everything in them is escaped as data."""
    return "^".join("&".join(escape(sub) for sub in comp) for comp in composite.split(value)
                    ).rstrip("^")


def hl7_ts(value: datetime | None) -> str:
    """DTM: local wall clock as given, with the offset when the time is zone-aware."""
    if value is None:
        return ""
    return value.strftime("%Y%m%d%H%M%S%z" if value.tzinfo else "%Y%m%d%H%M%S")


def is_stat(category: str) -> bool:
    return category == TriageCategory.ACUTE.value


def compose_oru(result: ResultView, message: MessageView, control_id: str,
                config: OutboundConfig, pdf: bytes | None, now: datetime, *,
                correction: bool = False) -> bytes:
    """Build the ORU^R01 for ``result`` as UTF-8 ER7 bytes, segments ended by ``\\r``.

    ``correction``: the follow-up that brings a late PDF (OBR-25 ``C``, same order)."""
    if not _CONTROL_ID.fullmatch(control_id):
        raise ComposeError("control id must be 1-20 characters of [A-Za-z0-9._-]")
    if result.category not in CATEGORIES:
        raise ComposeError(f"unknown result category {result.category!r}")
    observed = hl7_ts(message.acquired_at or message.received_at)
    demo = message.demographics
    segments = [_msh(control_id, config, now), _pid(demo)]
    if demo.location:
        segments.append(_segment("PV1", "1", "U", escape_composite(demo.location)))
    segments += _order(demo, observed, result.category, now, "C" if correction else "P")
    segments += _observations(result, message, observed, pdf, config.pdf_ed_type)
    return ("\r".join(segments) + "\r").encode("utf-8")


def _msh(control_id: str, cfg: OutboundConfig, now: datetime) -> str:
    return (f"MSH|^~\\&|{escape(cfg.sending_application)}|{escape(cfg.sending_facility)}"
            f"|{escape(cfg.receiving_application)}|{escape(cfg.receiving_facility)}"
            f"|{hl7_ts(now)}||ORU^R01^ORU_R01|{control_id}|{cfg.processing_id}|2.5.1"
            "||||||UNICODE UTF-8")


def _pid(demo: Demographics) -> str:
    if not demo.patient_id:
        raise ComposeError("no patient identifier: the EHR cannot file the result (PID-3)")
    # XPN-7 "U" (unspecified name type) keeps the required PID-5 honest when no name is known
    name = escape_composite(demo.patient_name) if demo.patient_name else "^^^^^^U"
    birth = demo.birth_date if demo.birth_date and _HL7_DATE.fullmatch(demo.birth_date) else ""
    sex = (demo.sex or "")[:1].upper()
    sex = sex if not sex or sex in _SEXES else "U"
    return _segment("PID", "1", "", escape_composite(demo.patient_id), "", name, "", birth, sex)


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields)).rstrip("|")


def _order(demo: Demographics, observed: str, category: str, now: datetime,
           status: str) -> list[str]:
    # no filler order number: the accession number is the filler's id of the request (IHE)
    placer, filler = escape(demo.placer_order), escape(demo.filler_order or demo.accession)
    priority = "S" if is_stat(category) else "R"
    obr = [""] * 28
    obr[1:5] = ["1", placer, filler, EKG_STUDY]
    obr[7] = observed
    obr[18] = escape(demo.accession)
    obr[22] = hl7_ts(now)
    obr[24:28] = ["EC", status, "", f"^^^^^{priority}"]
    tq1 = ["1", *[""] * 7, priority]
    return [_segment("ORC", "RE", placer, filler, "", ORDER_STATUS[status]), _segment("OBR", *obr[1:]),
            _segment("TQ1", *tq1)]


def _obx(value_type: str, code: str, value: str, *, units: str = "", flag: str = "",
         observed: str = "", method: str = "", equipment: str = "", sub_id: str = "") -> str:
    """OBX-2 onwards (the caller prepends OBX-1); OBX-11 is always P (preliminary)."""
    fields = [value_type, code, sub_id, value, units, "", flag, "", "", "P",
              "", "", observed, "", "", method, equipment]
    return "|".join(fields).rstrip("|")


def _observations(result: ResultView, message: MessageView, observed: str,
                  pdf: bytes | None, ed_type: str) -> list[str]:
    display, flag, _ = CATEGORIES[result.category]
    model = escape(result.model_id)
    stamp = {"observed": observed, "method": f"{model}^Automated ECG triage model^{LOCAL_SYSTEM}",
             "equipment": f"{model}^ECG-GATEWAY^{escape(result.model_sha256[:16])}"}
    obx = [_obx("CWE", f"ECGGW-CAT^ECG AI triage category^{LOCAL_SYSTEM}",
                f"{result.category}^{escape(display)}^{LOCAL_SYSTEM}", flag=flag, **stamp)]
    for category in TriageCategory:
        p = result.probability(category.value)
        if p is None:
            continue  # the quality gate stopped the ECG before the model ran
        if not 0.0 <= p <= 1.0:  # also catches NaN, which an NM field cannot carry
            raise ComposeError(f"probability of {category.value} is not in [0, 1]")
        name, _, code = CATEGORIES[category.value]
        obx.append(_obx("NM", f"{code}^Probability {name.lower()}^{LOCAL_SYSTEM}",
                        f"{p:.4f}", units="1^^UCUM", **stamp))
    obx += _measurement_obx(result, observed)
    obx += _statement_obx(result, stamp)
    obx.append(_obx("ST", EKG_IMPRESSION, escape(impression(result)), flag=flag, **stamp))
    if pdf is not None:
        obx.append(_obx("ED", EKG_STUDY, f"^{ed_type}^Base64^"
                        + base64.b64encode(pdf).decode("ascii"), observed=observed))
    segments = [f"OBX|{i}|{body}" for i, body in enumerate(obx, start=1)]
    uid = f" ECG UID {message.ecg_uid}." if message.ecg_uid else ""
    note = escape(f"Automated ECG triage by model {result.model_id} (sha256 "
                  f"{result.model_sha256[:16]}): preliminary result, not a diagnosis; a "
                  f"physician must review and confirm it.{uid}")
    # the NTE belongs to the impression OBX (the observation a clinician reads)
    impression_at = len(obx) - (pdf is not None)
    segments.insert(impression_at, f"NTE|1|L|{note}")
    return segments


def _measurement_obx(result: ResultView, observed: str) -> list[str]:
    """One NM per measured value (integers: ms, /min, degrees); unmeasured ones are absent."""
    out = []
    for name, (code, units, method) in MEASUREMENT_OBX.items():
        value = getattr(result.measurements, name)
        if value is None or not math.isfinite(value):
            continue
        out.append(_obx("NM", code, f"{value:.0f}", units=units, observed=observed,
                        method=method or MEASURED_BY))
    return out


def _statement_obx(result: ResultView, stamp: dict[str, str]) -> list[str]:
    """Per statement the model found: a coded CWE and its probability, grouped by OBX-4."""
    out = []
    for n, st in enumerate(result.statements, start=1):
        value = f"{escape(st.code)}^{escape(st.description)}^{STATEMENT_SYSTEM}"
        out.append(_obx("CWE", STATEMENT, value, sub_id=str(n), **stamp))
        if 0.0 <= st.probability <= 1.0:
            out.append(_obx("NM", STATEMENT_P, f"{st.probability:.4f}", units="1^^UCUM",
                            sub_id=str(n), **stamp))
    return out


def impression(result: ResultView) -> str:
    """One line a clinician reads first; states that the result is automated."""
    if result.category == UNINTERPRETABLE:
        reasons = quality_reasons(result)
        why = f": {reasons}" if reasons else ""
        return (f"ECG UNINTERPRETABLE for automated triage (insufficient signal quality{why}) - "
                "requires physician review")
    label = CATEGORIES[result.category][0].upper()
    if result.decision is not None and result.decision.text:
        return f"AI triage {label}: {result.decision.text} - preliminary, requires physician review"
    p = result.probability(result.category)
    shown = "" if p is None else f" (p={p:.2f})" if p >= 0.01 else " (p<0.01)"
    return f"AI triage {label}{shown} - preliminary, requires physician review"


def quality_reasons(result: ResultView, limit: int = 6) -> str:
    """The quality gate's reason codes (e.g. ``lead_off:V1,V2``), as the triage wrote them."""
    reasons = result.quality.get("reasons")
    if not isinstance(reasons, list):
        return ""
    codes = [str(r) for r in reasons if isinstance(r, str) and r][:limit]
    return "; ".join(codes)
