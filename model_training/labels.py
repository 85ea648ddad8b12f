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

Two versions (docs: ../shared/docs/triage.md §3 and §4): **2.0** (the default) moves STE_ to
abnormal_not_acute, the INJ* rows to subacute, a sinus bradycardia < 40 bpm to subacute, and
lets a cardiologist's NORM at likelihood 100 outrank the cart's descriptive statements
(:data:`NORM_OUTRANKS`); **1.0** (``mapping="1.0"``) is the table v1 was trained on, kept so
every model card reports both.

Change any row -> a new version; the version is written into checkpoints and cards.
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

TABLE_1_0: tuple[Rule, ...] = (
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

#: Rows that mapping 2.0 changes (triage.md §4, with the audit's reasons).
CHANGES_2_0: dict[str, Rule] = {
    "STE_": Rule("STE_", ANA, "fixed", "form statement without likelihood: early repolarisation, LVH or "
                 "LBBB; a STEMI is coded as a stadium-I infarct (acute through the MI rows)"),
    **{code: Rule(code, SA, "fixed", f"subendocardial injury, {where}: reports describe repolarisation "
                  "changes (ischaemia for review within hours to days); acute only with a stadium-I infarct")
       for code, where in (("INJAS", "anteroseptal"), ("INJAL", "anterolateral"), ("INJLA", "lateral"),
                           ("INJIN", "inferior"), ("INJIL", "inferolateral"))},
    "SBRAD": Rule("SBRAD", ANA, "rate", "usually benign; subacute if rate < 40 bpm (well tolerated, "
                  "work-up within days)"),
}
TABLE_2_0: tuple[Rule, ...] = tuple(CHANGES_2_0.get(rule.code, rule) for rule in TABLE_1_0)

#: Mapping 2.0: a NORM at likelihood 100 outranks these statements (descriptors, mostly from the
#: cart's own software), SBRAD only at >= 40 bpm and STACH only at <= 150 bpm; QWAVE, BIGU,
#: TRIGU, PACE and diagnostic codes do not qualify.
NORM_OUTRANKS = frozenset({"SBRAD", "STACH", "NT_", "TAB_", "LOWT", "VCLVH", "HVOLT", "LPR", "ABQRS",
                           "PAC", "PVC", "PRC(S)", "STE_"})
NORMAL_STATEMENTS = frozenset({"NORM", "SR", "SARRH"})


@dataclass(frozen=True)
class TriageMapping:
    """One version of the SCP statement -> triage mapping."""

    version: str
    table: tuple[Rule, ...]
    brady_category: TriageCategory  # sinus bradycardia below EXTREME_BRADY_BPM
    norm_outranks: frozenset[str] = frozenset()  # empty: NORM never outranks anything

    @property
    def rules(self) -> dict[str, Rule]:
        return {rule.code: rule for rule in self.table}


MAPPINGS: dict[str, TriageMapping] = {
    "1.0": TriageMapping("ptbxl-triage-map-1.0", TABLE_1_0, A),
    "2.0": TriageMapping("ptbxl-triage-map-2.0", TABLE_2_0, SA, NORM_OUTRANKS),
}
DEFAULT_MAPPING = "2.0"
MAPPING_VERSION = MAPPINGS[DEFAULT_MAPPING].version
PTBXL_TABLE = MAPPINGS[DEFAULT_MAPPING].table
RULES: dict[str, Rule] = MAPPINGS[DEFAULT_MAPPING].rules


#: PTB-XL's description of each statement (scp_statements.csv, CC BY 4.0): the words a clinician
#: reads beside a code in the result.
SCP_DESCRIPTIONS: dict[str, str] = {
    "NORM": "normal ECG", "SR": "sinus rhythm", "SARRH": "sinus arrhythmia",
    "SBRAD": "sinus bradycardia", "STACH": "sinus tachycardia",
    "NDT": "non-diagnostic T abnormalities", "NST_": "non-specific ST changes",
    "NT_": "non-specific T-wave changes", "TAB_": "T-wave abnormality",
    "LOWT": "low amplitude T-waves", "DIG": "digitalis-effect",
    "LVH": "left ventricular hypertrophy",
    "VCLVH": "voltage criteria (QRS) for left ventricular hypertrophy", "HVOLT": "high QRS voltage",
    "SEHYP": "septal hypertrophy", "LAO/LAE": "left atrial overload/enlargement",
    "RAO/RAE": "right atrial overload/enlargement", "LAFB": "left anterior fascicular block",
    "LPFB": "left posterior fascicular block", "IRBBB": "incomplete right bundle branch block",
    "CRBBB": "complete right bundle branch block", "ILBBB": "incomplete left bundle branch block",
    "IVCD": "non-specific intraventricular conduction disturbance (block)",
    "1AVB": "first degree AV block", "LPR": "prolonged PR interval", "ABQRS": "abnormal QRS",
    "QWAVE": "Q waves present", "PAC": "atrial premature complex",
    "PVC": "ventricular premature complex", "PRC(S)": "premature complex(es)",
    "BIGU": "bigeminal pattern (unknown origin, SV or Ventricular)",
    "TRIGU": "trigeminal pattern (unknown origin, SV or Ventricular)",
    "PACE": "normal functioning artificial pacemaker", "CLBBB": "complete left bundle branch block",
    "WPW": "Wolf-Parkinson-White syndrome", "LNGQT": "long QT-interval",
    "RVH": "right ventricular hypertrophy",
    "LVOLT": "low QRS voltages in the frontal and horizontal leads",
    "EL": "electrolytic disturbance or drug (former EDIS)",
    "ANEUR": "ST-T changes compatible with ventricular aneurysm",
    "SVARR": "supraventricular arrhythmia", "ISC_": "non-specific ischemic",
    "ISCAL": "ischemic in anterolateral leads", "ISCAS": "ischemic in anteroseptal leads",
    "ISCAN": "ischemic in anterior leads", "ISCLA": "ischemic in lateral leads",
    "ISCIN": "ischemic in inferior leads", "ISCIL": "ischemic in inferolateral leads",
    "STD_": "non-specific ST depression", "INVT": "inverted T-waves", "AFIB": "atrial fibrillation",
    "AFLT": "atrial flutter", "2AVB": "second degree AV block", "3AVB": "third degree AV block",
    "SVTAC": "supraventricular tachycardia", "PSVT": "paroxysmal supraventricular tachycardia",
    "STE_": "non-specific ST elevation", "INJAS": "subendocardial injury in anteroseptal leads",
    "INJAL": "subendocardial injury in anterolateral leads",
    "INJLA": "subendocardial injury in lateral leads",
    "INJIN": "subendocardial injury in inferior leads",
    "INJIL": "subendocardial injury in inferolateral leads",
    "IMI": "inferior myocardial infarction", "ILMI": "inferolateral myocardial infarction",
    "IPMI": "inferoposterior myocardial infarction",
    "IPLMI": "inferoposterolateral myocardial infarction",
    "ASMI": "anteroseptal myocardial infarction", "AMI": "anterior myocardial infarction",
    "ALMI": "anterolateral myocardial infarction", "LMI": "lateral myocardial infarction",
    "PMI": "posterior myocardial infarction",
}


def statement_vocabulary(mapping: str | TriageMapping | None = None) -> dict[str, list[str]]:
    """Codes (the statement head's column order), descriptions and each statement's base
    category under ``mapping``, as the checkpoint stores them."""
    rules = get_mapping(mapping).rules
    codes = list(statement_codes())
    return {"codes": codes, "descriptions": [SCP_DESCRIPTIONS[c] for c in codes],
            "categories": [rules[c].category.value for c in codes]}


def get_mapping(mapping: str | TriageMapping | None = None) -> TriageMapping:
    """A mapping by short name ("1.0", "2.0") or full version; ``None`` -> the default."""
    if isinstance(mapping, TriageMapping):
        return mapping
    if mapping is None:
        return MAPPINGS[DEFAULT_MAPPING]
    for key, value in MAPPINGS.items():
        if mapping in (key, value.version):
            return value
    raise ValueError(f"unknown mapping {mapping!r}; known: {sorted(MAPPINGS)}")


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


def _rate_category(rule: Rule, rate: float, mapping: TriageMapping) -> TriageCategory:
    if math.isnan(rate):
        return rule.category
    if rule.code in ("AFIB", "AFLT") and (rate > AF_RAPID_BPM or rate < EXTREME_BRADY_BPM):
        return A
    if rule.code == "SBRAD" and rate < EXTREME_BRADY_BPM:
        return mapping.brady_category
    if rule.code == "STACH" and rate > EXTREME_TACHY_BPM:
        return A
    return rule.category


def statement_category(code: str, record: Mapping[str, Any] | None = None,
                       mapping: str | TriageMapping | None = None) -> TriageCategory:
    """Category of one statement in the context of its record (stadium, rate)."""
    table = get_mapping(mapping)
    rule = table.rules[code]
    if rule.rule == "stadium":
        return _stadium_category(record)
    if rule.rule == "rate":
        return _rate_category(rule, _rate(record), table)
    return rule.category


def _norm_outranks(scp_codes: Mapping[str, float], record: Mapping[str, Any] | None,
                   mapping: TriageMapping) -> bool:
    """Mapping 2.0: NORM at 100 beside only descriptive statements -> the record is normal."""
    if not mapping.norm_outranks or scp_codes.get("NORM") != 100.0:
        return False
    rate = _rate(record)
    for code in counted_statements(scp_codes):
        if code in NORMAL_STATEMENTS:
            continue
        if code not in mapping.norm_outranks:
            return False
        if code == "SBRAD" and rate < EXTREME_BRADY_BPM:
            return False
        if code == "STACH" and rate > EXTREME_TACHY_BPM:
            return False
    return True


def counted_statements(scp_codes: Mapping[str, float]) -> list[str]:
    """The statements that count for the label (likelihood >= MIN_LIKELIHOOD or 0)."""
    return [code for code, likelihood in scp_codes.items()
            if likelihood >= MIN_LIKELIHOOD or likelihood == 0]


def statement_codes() -> tuple[str, ...]:
    """Every SCP code of the table, in table order: the columns of the statement targets."""
    return tuple(rule.code for rule in TABLE_1_0)


def triage_category(scp_codes: Mapping[str, float], record: Mapping[str, Any] | None = None,
                    mapping: str | TriageMapping | None = None) -> TriageCategory | None:
    """The triage category of a PTB-XL record, or None when no statement counts.

    ``record`` is the ptbxl_database.csv row (a dict or pandas Series) with
    ``heart_rate_bpm`` added; without it the rate rules fall back to their base category.
    Unknown statement codes raise KeyError: the table must cover every code.
    """
    table = get_mapping(mapping)
    counted = counted_statements(scp_codes)
    rules = table.rules
    unknown = [code for code in counted if code not in rules]
    if unknown:
        raise KeyError(unknown[0])
    if _norm_outranks(scp_codes, record, table):
        return N
    worst: TriageCategory | None = None
    for code in counted:
        cat = statement_category(code, record, table)
        if worst is None or SEVERITY[cat] > SEVERITY[worst]:
            worst = cat
    return worst


def deciding_statements(scp_codes: Mapping[str, float], record: Mapping[str, Any] | None = None,
                        mapping: str | TriageMapping | None = None) -> tuple[str, ...]:
    """The counted statements that set the record's category (the most severe ones).

    For reviewing the mapping: which rows put records into a category, e.g. which statements
    make the acute labels that a model scores like normal ECGs (decision 33).
    """
    table = get_mapping(mapping)
    category = triage_category(scp_codes, record, table)
    if category is None:
        return ()
    if _norm_outranks(scp_codes, record, table):
        return ("NORM",)
    return tuple(sorted(code for code in counted_statements(scp_codes)
                        if statement_category(code, record, table) == category))


def mapping_table(mapping: str | TriageMapping | None = None) -> list[dict[str, str]]:
    """The table as plain rows (for the model card)."""
    return [{**asdict(rule), "category": rule.category.value} for rule in get_mapping(mapping).table]


def mapping_hash(mapping: str | TriageMapping | None = None) -> str:
    """sha256 over the table and thresholds: proves which mapping a checkpoint used."""
    table = get_mapping(mapping)
    payload: dict[str, Any] = {"version": table.version, "min_likelihood": MIN_LIKELIHOOD,
                               "rates": [AF_RAPID_BPM, EXTREME_BRADY_BPM, EXTREME_TACHY_BPM],
                               "table": mapping_table(table)}
    if table.norm_outranks:  # 1.0's hash stays what v1's checkpoint recorded
        payload["brady"] = table.brady_category.value
        payload["norm_outranks"] = sorted(table.norm_outranks)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def mapping_markdown(mapping: str | TriageMapping | None = None) -> str:
    """The table in Markdown, one row per statement, for MODEL_CARD.md."""
    table = get_mapping(mapping)
    lines = ["| SCP code | category | rule | rationale |", "|---|---|---|---|"]
    lines += [f"| {r.code} | {r.category.value} | {r.rule} | {r.rationale} |" for r in table.table]
    if table.norm_outranks:
        lines.append(f"\nA NORM at likelihood 100 outranks {', '.join(sorted(table.norm_outranks))} "
                     f"(SBRAD only at >= {EXTREME_BRADY_BPM:.0f} bpm, STACH only at <= "
                     f"{EXTREME_TACHY_BPM:.0f} bpm): the record is normal.")
    return "\n".join(lines)
