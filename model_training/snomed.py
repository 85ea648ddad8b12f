"""SNOMED-CT (PhysioNet/CinC 2021 ``#Dx``) -> triage category, for the external test set.

Same semantics as the PTB-XL table in :mod:`model_training.labels` (most severe wins,
rate rules from the signal); the rows mirror the SCP rows they correspond to. Codes not in
the table (e.g. clinical diagnoses such as heart failure) are ignored; a record with no
mapped code has no label. Never train or tune on this set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ecg_gateway.ecg import TriageCategory
from model_training.labels import (
    AF_RAPID_BPM,
    ANA,
    EXTREME_BRADY_BPM,
    EXTREME_TACHY_BPM,
    SA,
    SEVERITY,
    A,
    N,
)

SNOMED_VERSIONS = {"1.0": "cinc2021-triage-map-1.0", "2.0": "cinc2021-triage-map-2.0"}
SNOMED_VERSION = SNOMED_VERSIONS["2.0"]

# code: (abbreviation, category, rule, rationale); rule "af"/"brady"/"tachy" = rate rule
SNOMED_TABLE: dict[str, tuple[str, TriageCategory, str, str]] = {
    "426783006": ("NSR", N, "fixed", "sinus rhythm"),
    "427393009": ("SA", N, "fixed", "sinus arrhythmia, physiological"),
    "426177001": ("SB", ANA, "brady", "as SBRAD: acute if rate < 40"),
    "426627000": ("Brady", ANA, "brady", "as SBRAD: acute if rate < 40"),
    "427084000": ("STach", ANA, "tachy", "as STACH: acute if rate > 150"),
    "164889003": ("AF", SA, "af", "as AFIB: acute if rate > 110 or < 40"),
    "164890007": ("AFL", SA, "af", "as AFLT"),
    "195080001": ("AFAFL", SA, "af", "as AFIB"),
    "426749004": ("CAF", SA, "af", "as AFIB"),
    "282825002": ("PAF", SA, "af", "as AFIB"),
    "314208002": ("RAF", A, "fixed", "AF with rapid ventricular response"),
    "270492004": ("IAVB", ANA, "fixed", "as 1AVB"),
    "164947007": ("LPR", ANA, "fixed", "as LPR"),
    "713427006": ("CRBBB", ANA, "fixed", "as CRBBB"),
    "59118001": ("RBBB", ANA, "fixed", "as CRBBB"),
    "713426002": ("IRBBB", ANA, "fixed", "as IRBBB"),
    "251120003": ("ILBBB", ANA, "fixed", "as ILBBB"),
    "6374002": ("BBB", SA, "fixed", "unspecified bundle branch block: LBBB not excluded"),
    "733534002": ("CLBBB", SA, "fixed", "as CLBBB"),
    "164909002": ("LBBB", SA, "fixed", "as CLBBB"),
    "445118002": ("LAnFB", ANA, "fixed", "as LAFB"),
    "445211001": ("LPFB", ANA, "fixed", "as LPFB"),
    "698252002": ("NSIVCB", ANA, "fixed", "as IVCD"),
    "82226007": ("DIB", ANA, "fixed", "as IVCD"),
    "39732003": ("LAD", ANA, "fixed", "axis deviation, no urgency"),
    "47665007": ("RAD", ANA, "fixed", "axis deviation, no urgency"),
    "251200008": ("ICA", ANA, "fixed", "axis, no urgency"),
    "284470004": ("PAC", ANA, "fixed", "as PAC"),
    "63593006": ("SVPB", ANA, "fixed", "as PAC"),
    "251170000": ("BPAC", ANA, "fixed", "as PAC"),
    "251164006": ("JPC", ANA, "fixed", "as PAC"),
    "427172004": ("PVC", ANA, "fixed", "as PVC"),
    "17338001": ("VPB", ANA, "fixed", "as PVC"),
    "164884008": ("VEB", ANA, "fixed", "as PVC"),
    "251182009": ("VPVC", ANA, "fixed", "couplets, no action by themselves"),
    "251173003": ("AB", ANA, "fixed", "as BIGU"),
    "251168009": ("SVB", ANA, "fixed", "as BIGU"),
    "11157007": ("VBig", ANA, "fixed", "as BIGU"),
    "251180001": ("VTrig", ANA, "fixed", "as TRIGU"),
    "251187003": ("AED", ANA, "fixed", "escape beat"),
    "75532003": ("VEsB", ANA, "fixed", "escape beat"),
    "13640000": ("FB", ANA, "fixed", "fusion beats"),
    "10370003": ("PR", ANA, "fixed", "as PACE"),
    "251268003": ("AP", ANA, "fixed", "as PACE"),
    "251266004": ("VPP", ANA, "fixed", "as PACE"),
    "164873001": ("LVH", ANA, "fixed", "as LVH"),
    "55827005": ("LVHV", ANA, "fixed", "as VCLVH"),
    "266249003": ("VH", ANA, "fixed", "as LVH"),
    "253352002": ("LAA", ANA, "fixed", "as LAO/LAE"),
    "67741000119109": ("LAE", ANA, "fixed", "as LAO/LAE"),
    "446813000": ("LAH", ANA, "fixed", "as LAO/LAE"),
    "195126007": ("AH", ANA, "fixed", "as LAO/LAE"),
    "253339007": ("RAAb", ANA, "fixed", "as RAO/RAE"),
    "446358003": ("RAH", ANA, "fixed", "as RAO/RAE"),
    "67751000119106": ("RAHV", ANA, "fixed", "as RAO/RAE"),
    "251223006": ("TPW", ANA, "fixed", "tall P wave, atrial overload"),
    "251205003": ("PPW", ANA, "fixed", "P-wave form"),
    "164912004": ("PWC", ANA, "fixed", "P-wave form"),
    "164934002": ("TAb", ANA, "fixed", "as TAB_"),
    "428750005": ("NSSTTA", ANA, "fixed", "as NST_"),
    "55930002": ("STC", ANA, "fixed", "as NST_"),
    "164930006": ("STIAb", ANA, "fixed", "as NST_"),
    "251259000": ("HTV", ANA, "fixed", "T-wave form"),
    "164937009": ("UAb", ANA, "fixed", "U-wave form"),
    "164951009": ("abQRS", ANA, "fixed", "as ABQRS"),
    "164917005": ("QAb", ANA, "fixed", "as QWAVE"),
    "164921003": ("RAb", ANA, "fixed", "R-wave form"),
    "365413008": ("PRWP", ANA, "fixed", "R-wave progression"),
    "164942001": ("FQRS", ANA, "fixed", "QRS form"),
    "61721007": ("CVCL/CCVCL", ANA, "fixed", "rotation"),
    "251199005": ("CCR", ANA, "fixed", "rotation"),
    "251198002": ("CR", ANA, "fixed", "rotation"),
    "49578007": ("SPRI", ANA, "fixed", "short PR without named pre-excitation"),
    "428417006": ("ERe", ANA, "fixed", "early repolarisation"),
    "164867002": ("OldMI", ANA, "fixed", "as MI stadium III"),
    "106068003": ("ARH", ANA, "fixed", "ectopic atrial rhythm"),
    "233892002": ("AAR", ANA, "fixed", "ectopic atrial rhythm"),
    "195101003": ("WAP", ANA, "fixed", "wandering pacemaker"),
    "17366009": ("SAAWR", ANA, "fixed", "wandering pacemaker"),
    "251139008": ("ALR", ANA, "fixed", "technical: lead reversal, repeat the ECG"),
    "111975006": ("LQT", SA, "fixed", "as LNGQT"),
    "77867006": ("SQT", SA, "fixed", "short QT: channelopathy work-up"),
    "251146004": ("LQRSV", SA, "fixed", "as LVOLT"),
    "89792004": ("RVH", SA, "fixed", "as RVH"),
    "59931005": ("TInv", SA, "fixed", "as INVT"),
    "429622005": ("STD", SA, "fixed", "as STD_"),
    "704997005": ("ISTD", SA, "fixed", "as STD_"),
    "164861001": ("MIs", SA, "fixed", "as ISC_"),
    "413844008": ("CMI", SA, "fixed", "as ISC_"),
    "426434006": ("AnMIs", SA, "fixed", "as ISCAN"),
    "425419005": ("IIs", SA, "fixed", "as ISCIN"),
    "425623009": ("LIs", SA, "fixed", "as ISCLA"),
    "370365005": ("LVS", SA, "fixed", "strain pattern: ST-T as ISC_"),
    "164865005": ("MI", SA, "fixed", "infarct, stage unknown (as unknown stadium)"),
    "54329005": ("AnMI", SA, "fixed", "infarct, stage unknown (as unknown stadium)"),
    "74390002": ("WPW", SA, "fixed", "as WPW"),
    "195060002": ("VPEx", SA, "fixed", "as WPW"),
    "418818005": ("BRU", SA, "fixed", "Brugada pattern: EP referral"),
    "54016002": ("MoI", SA, "fixed", "Wenckebach: review, usually not acute"),
    "233917008": ("AVB", SA, "fixed", "AV block of unnamed degree"),
    "204384007": ("CIAHB", SA, "fixed", "congenital, known"),
    "29320008": ("AVJR", SA, "fixed", "junctional rhythm: review"),
    "426995002": ("JE", SA, "fixed", "junctional escape: review"),
    "426664006": ("AJR", SA, "fixed", "accelerated junctional rhythm: review"),
    "61277005": ("AIVR", SA, "fixed", "AIVR: often reperfusion, review"),
    "65778007": ("SAB", SA, "fixed", "sinoatrial block: review"),
    "60423000": ("SND", SA, "fixed", "sinus node dysfunction: review"),
    "74615001": ("BTS", SA, "fixed", "brady-tachy syndrome: review"),
    "698247007": ("CD", SA, "fixed", "as SVARR"),
    "195042002": ("IIAVB", A, "fixed", "as 2AVB"),
    "426183003": ("IIAVBII", A, "fixed", "Mobitz II: pacing assessment"),
    "27885002": ("CHB", A, "fixed", "as 3AVB"),
    "50799005": ("AVD", A, "fixed", "AV dissociation: CHB or VT not excluded"),
    "5609005": ("SARR", A, "fixed", "sinus arrest"),
    "81898007": ("VEsR", A, "fixed", "ventricular escape rhythm"),
    "49260003": ("IR", A, "fixed", "idioventricular rhythm"),
    "713422000": ("ATach", A, "fixed", "as SVTAC"),
    "426761007": ("SVT", A, "fixed", "as SVTAC"),
    "67198005": ("PSVT", A, "fixed", "as PSVT"),
    "251166008": ("AVNRT", A, "fixed", "as SVTAC"),
    "233897008": ("AVRT", A, "fixed", "as SVTAC"),
    "426648003": ("JTach", A, "fixed", "as SVTAC"),
    "425856008": ("PVT", A, "fixed", "ventricular tachycardia"),
    "164895002": ("VTach", A, "fixed", "ventricular tachycardia"),
    "164896001": ("VF", A, "fixed", "ventricular fibrillation"),
    "111288001": ("VFL", A, "fixed", "ventricular flutter"),
    "164931005": ("STE", A, "fixed", "as STE_"),
    "57054005": ("AMI", A, "fixed", "acute infarct (as stadium I)"),
    "413444003": ("AMIs", A, "fixed", "acute ischaemia (as INJ*)"),
}


#: Mapping 2.0's changes carried over to the SNOMED codes that mirror the changed PTB-XL rows.
CHANGES_2_0: dict[str, tuple[str, TriageCategory, str, str]] = {
    "164931005": ("STE", ANA, "fixed", "as STE_ (mapping 2.0: early repolarisation, LVH, LBBB)"),
    "413444003": ("AMIs", SA, "fixed", "as INJ* (mapping 2.0: review within hours to days)"),
}


def snomed_table(mapping: str = "2.0") -> dict[str, tuple[str, TriageCategory, str, str]]:
    """The SNOMED table under a mapping version ("1.0" or "2.0")."""
    return {**SNOMED_TABLE, **CHANGES_2_0} if mapping == "2.0" else dict(SNOMED_TABLE)


def _code_category(code: str, rate: float, mapping: str = "2.0") -> TriageCategory | None:
    row = snomed_table(mapping).get(code)
    if row is None:
        return None
    _, cat, rule, _ = row
    if math.isnan(rate):
        return cat
    if rule == "af" and (rate > AF_RAPID_BPM or rate < EXTREME_BRADY_BPM):
        return A
    if rule == "brady" and rate < EXTREME_BRADY_BPM:
        return A if mapping == "1.0" else SA
    if rule == "tachy" and rate > EXTREME_TACHY_BPM:
        return A
    return cat


def snomed_category(codes: Iterable[str], heart_rate_bpm: float = math.nan,
                    mapping: str = "2.0") -> TriageCategory | None:
    """Most severe category over the mapped codes; None if no code is in the table."""
    worst: TriageCategory | None = None
    for code in codes:
        cat = _code_category(code.strip(), heart_rate_bpm, mapping)
        if cat is not None and (worst is None or SEVERITY[cat] > SEVERITY[worst]):
            worst = cat
    return worst


def snomed_markdown(mapping: str = "2.0") -> str:
    lines = ["| SNOMED | abbr. | category | rule | rationale |", "|---|---|---|---|---|"]
    lines += [f"| {code} | {abbr} | {cat.value} | {rule} | {why} |"
              for code, (abbr, cat, rule, why) in snomed_table(mapping).items()]
    return "\n".join(lines)
