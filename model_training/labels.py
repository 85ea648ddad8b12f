"""PTB-XL SCP statements -> triage category (docs/triage.md §3), as one reviewable table.

Rules, applied to every statement of a record:
1. only statements with likelihood >= 50, or 0 (= "unspecified"; all rhythm/form statements)
   count; 15/35 are the cardiologists' "possible" and are ignored;
2. the record's category is the MOST SEVERE over its statements (acute > subacute >
   abnormal_not_acute > normal); NORM/SR/SARRH give "normal" only when nothing else is there;
3. infarct statements take their category from the record's infarction stadium;
4. AF/flutter and sinus brady/tachycardia take theirs from the ventricular rate measured on
   the signal (``record["heart_rate_bpm"]``, see :mod:`model_training.heart_rate`);
5. a record with no counting statement has no label (``None``) and is left out.

Change any row -> bump :data:`MAPPING_VERSION`; it is written into checkpoints and cards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory

N, ANA, SA, A = (TriageCategory.NORMAL, TriageCategory.ABNORMAL_NOT_ACUTE,
                 TriageCategory.SUBACUTE, TriageCategory.ACUTE)
MAPPING_VERSION = "ptbxl-triage-map-1.0"
MIN_LIKELIHOOD = 50.0
SEVERITY = {cat: i for i, cat in enumerate(CATEGORY_ORDER)}

#: Rate thresholds (bpm) of the rate rules.
AF_RAPID_BPM = 110.0
EXTREME_BRADY_BPM = 40.0
EXTREME_TACHY_BPM = 150.0


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    category: TriageCategory  # the category when no stadium/rate refines it
    rule: str  # "fixed" | "stadium" | "rate"
    rationale: str


_MI = "infarct: stadium I/I-II -> acute, II/II-III/unknown -> subacute, III -> abnormal_not_acute"
_AF = f"rate/anticoagulation work-up; acute if ventricular rate > {AF_RAPID_BPM:.0f} or < 40 bpm"

PTBXL_TABLE: tuple[Rule, ...] = (
    Rule("NORM", N, "fixed", "normal ECG (only if nothing else is present)"),
    Rule("SR", N, "fixed", "sinus rhythm: rhythm only, never overrides"),
    Rule("SARRH", N, "fixed", "sinus arrhythmia is physiological"),
    Rule("SBRAD", ANA, "rate", "usually benign; acute if rate < 40 bpm"),
    Rule("STACH", ANA, "rate", "cause known to the ward; acute if rate > 150 bpm"),
    Rule("NDT", ANA, "fixed", "non-diagnostic T abnormalities"),
    Rule("NST_", ANA, "fixed", "non-specific ST changes"),
    Rule("NT_", ANA, "fixed", "non-specific T-wave changes"),
    Rule("TAB_", ANA, "fixed", "non-specific T-wave abnormality"),
    Rule("LOWT", ANA, "fixed", "low T waves, non-specific"),
    Rule("DIG", ANA, "fixed", "drug effect, no action"),
    Rule("LVH", ANA, "fixed", "chronic"),
    Rule("VCLVH", ANA, "fixed", "voltage criterion only, chronic"),
    Rule("HVOLT", ANA, "fixed", "high QRS voltage, chronic/benign"),
    Rule("SEHYP", ANA, "fixed", "septal hypertrophy; HCM not separable from the statement"),
    Rule("LAO/LAE", ANA, "fixed", "atrial overload, chronic"),
    Rule("RAO/RAE", ANA, "fixed", "atrial overload, chronic"),
    Rule("LAFB", ANA, "fixed", "benign conduction disorder"),
    Rule("LPFB", ANA, "fixed", "conduction disorder, no urgency"),
    Rule("IRBBB", ANA, "fixed", "benign"),
    Rule("CRBBB", ANA, "fixed", "no urgency on its own"),
    Rule("ILBBB", ANA, "fixed", "no urgency"),
    Rule("IVCD", ANA, "fixed", "no urgency"),
    Rule("1AVB", ANA, "fixed", "benign"),
    Rule("LPR", ANA, "fixed", "prolonged PR = 1st-degree AV block form"),
    Rule("ABQRS", ANA, "fixed", "descriptive"),
    Rule("QWAVE", ANA, "fixed", "Q waves, most likely an old infarct"),
    Rule("PAC", ANA, "fixed", "benign"),
    Rule("PVC", ANA, "fixed", "benign when isolated"),
    Rule("PRC(S)", ANA, "fixed", "benign"),
    Rule("BIGU", ANA, "fixed", "bigeminy of unknown origin; no action by itself"),
    Rule("TRIGU", ANA, "fixed", "benign"),
    Rule("PACE", ANA, "fixed", "normally functioning pacemaker: abnormal, no action"),
    Rule("CLBBB", SA, "fixed", "needs work-up (ischaemia masked, cardiomyopathy)"),
    Rule("WPW", SA, "fixed", "EP referral; not acute in sinus rhythm"),
    Rule("LNGQT", SA, "fixed", "medication review, electrolytes"),
    Rule("RVH", SA, "fixed", "may indicate pulmonary hypertension: echo"),
    Rule("LVOLT", SA, "fixed", "effusion/infiltration work-up"),
    Rule("EL", SA, "fixed", "electrolyte/drug disturbance: lab check"),
    Rule("ANEUR", SA, "fixed", "persistent STE after MI: echo"),
    Rule("SVARR", SA, "fixed", "supraventricular arrhythmia, needs review"),
    Rule("ISC_", SA, "fixed", "ischaemia: same-day review"),
    Rule("ISCAL", SA, "fixed", "ischaemia, anterolateral: same-day review"),
    Rule("ISCAS", SA, "fixed", "ischaemia, anteroseptal: same-day review"),
    Rule("ISCAN", SA, "fixed", "ischaemia, anterior: same-day review"),
    Rule("ISCLA", SA, "fixed", "ischaemia, lateral: same-day review"),
    Rule("ISCIN", SA, "fixed", "ischaemia, inferior: same-day review"),
    Rule("ISCIL", SA, "fixed", "ischaemia, inferolateral: same-day review"),
    Rule("STD_", SA, "fixed", "ST depression, possible ischaemia"),
    Rule("INVT", SA, "fixed", "inverted T waves, possible ischaemia"),
    Rule("AFIB", SA, "rate", _AF),
    Rule("AFLT", SA, "rate", _AF + " (2:1 flutter ~150 bpm)"),
    Rule("2AVB", A, "fixed", "Mobitz II/2:1 need pacing assessment; Wenckebach not separable"),
    Rule("3AVB", A, "fixed", "complete heart block: immediate pacing assessment"),
    Rule("SVTAC", A, "fixed", "supraventricular tachycardia: immediate treatment"),
    Rule("PSVT", A, "fixed", "paroxysmal SVT, recorded during the episode"),
    Rule("STE_", A, "fixed", "ST elevation: STEMI until proven otherwise"),
    Rule("INJAS", A, "fixed", "subendocardial injury (NSTE-ACS pattern), anteroseptal"),
    Rule("INJAL", A, "fixed", "subendocardial injury (NSTE-ACS pattern), anterolateral"),
    Rule("INJLA", A, "fixed", "subendocardial injury (NSTE-ACS pattern), lateral"),
    Rule("INJIN", A, "fixed", "subendocardial injury (NSTE-ACS pattern), inferior"),
    Rule("INJIL", A, "fixed", "subendocardial injury (NSTE-ACS pattern), inferolateral"),
    *(Rule(code, SA, "stadium", _MI) for code in
      ("IMI", "ILMI", "IPMI", "IPLMI", "ASMI", "AMI", "ALMI", "LMI", "PMI")),
)
RULES: dict[str, Rule] = {rule.code: rule for rule in PTBXL_TABLE}


def _stadium_category(record: Mapping[str, Any] | None) -> TriageCategory:
    """Most acute stage named in ``infarction_stadium1/2``; unknown/missing -> subacute."""
    stages = []
    for key in ("infarction_stadium1", "infarction_stadium2"):
        value = record.get(key) if record is not None else None
        if isinstance(value, str) and value.startswith("Stadium "):
            stages.append(value.removeprefix("Stadium ").split("-")[0].strip())
    if "I" in stages:
        return A  # "I" or "I-II": acute/recent infarct
    if "II" in stages:
        return SA  # "II" or "II-III": a recent infarct is not excluded
    if "III" in stages:
        return ANA  # old infarct
    return SA  # stage undetermined: compare with a prior ECG, same-day review


def _rate(record: Mapping[str, Any] | None) -> float:
    value = record.get("heart_rate_bpm") if record is not None else None
    try:
        rate = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
    return rate


def _rate_category(rule: Rule, rate: float) -> TriageCategory:
    if math.isnan(rate):
        return rule.category
    if rule.code in ("AFIB", "AFLT") and (rate > AF_RAPID_BPM or rate < EXTREME_BRADY_BPM):
        return A
    if rule.code == "SBRAD" and rate < EXTREME_BRADY_BPM:
        return A
    if rule.code == "STACH" and rate > EXTREME_TACHY_BPM:
        return A
    return rule.category


def statement_category(code: str, record: Mapping[str, Any] | None = None) -> TriageCategory:
    """Category of one statement in the context of its record (stadium, rate)."""
    rule = RULES[code]
    if rule.rule == "stadium":
        return _stadium_category(record)
    if rule.rule == "rate":
        return _rate_category(rule, _rate(record))
    return rule.category


def counted_statements(scp_codes: Mapping[str, float]) -> list[str]:
    """The statements that count for the label (likelihood >= MIN_LIKELIHOOD or 0)."""
    return [code for code, likelihood in scp_codes.items()
            if likelihood >= MIN_LIKELIHOOD or likelihood == 0]


def statement_codes() -> tuple[str, ...]:
    """Every SCP code of the table, in table order: the columns of the statement targets."""
    return tuple(rule.code for rule in PTBXL_TABLE)


def triage_category(scp_codes: Mapping[str, float],
                    record: Mapping[str, Any] | None = None) -> TriageCategory | None:
    """The triage category of a PTB-XL record, or None when no statement counts.

    ``record`` is the ptbxl_database.csv row (a dict or pandas Series) with
    ``heart_rate_bpm`` added; without it the rate rules fall back to their base category.
    Unknown statement codes raise KeyError: the table must cover every code.
    """
    worst: TriageCategory | None = None
    for code in counted_statements(scp_codes):
        cat = statement_category(code, record)
        if worst is None or SEVERITY[cat] > SEVERITY[worst]:
            worst = cat
    return worst


def deciding_statements(scp_codes: Mapping[str, float],
                        record: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The counted statements that set the record's category (the most severe ones).

    For reviewing the mapping: which rows put records into a category, e.g. which statements
    make the acute labels that a model scores like normal ECGs (decision 33).
    """
    category = triage_category(scp_codes, record)
    if category is None:
        return ()
    return tuple(sorted(code for code in counted_statements(scp_codes)
                        if statement_category(code, record) == category))


def mapping_table() -> list[dict[str, str]]:
    """The table as plain rows (for the model card)."""
    return [{**asdict(rule), "category": rule.category.value} for rule in PTBXL_TABLE]


def mapping_hash() -> str:
    """sha256 over the table and thresholds: proves which mapping a checkpoint used."""
    payload = {"version": MAPPING_VERSION, "min_likelihood": MIN_LIKELIHOOD,
               "rates": [AF_RAPID_BPM, EXTREME_BRADY_BPM, EXTREME_TACHY_BPM],
               "table": mapping_table()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def mapping_markdown() -> str:
    """The table in Markdown, one row per statement, for MODEL_CARD.md."""
    lines = ["| SCP code | category | rule | rationale |", "|---|---|---|---|"]
    lines += [f"| {r.code} | {r.category.value} | {r.rule} | {r.rationale} |" for r in PTBXL_TABLE]
    return "\n".join(lines)
