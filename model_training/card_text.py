"""The prose of the model card (kept apart from the numbers that fill it)."""

from __future__ import annotations

import math
from typing import Any

from model_training.labels import AF_RAPID_BPM, EXTREME_BRADY_BPM, EXTREME_TACHY_BPM, MIN_LIKELIHOOD

INTENDED_USE = (
    "Research and integration testing of the ecg-gateway triage pipeline: ranking resting "
    "10-s 12-lead ECGs (8 independent leads used) of adults into normal / abnormal, not acute / "
    "subacute / acute, so that acute ECGs reach a physician first. It is a decision-support "
    "*prioritisation* aid, never a diagnosis: every ECG is still read by a clinician. It is NOT "
    "validated for clinical use; a hospital must validate it on its own ECGs (the DB-export "
    "dataset exists for that) before relying on it."
)

def _num(value: Any) -> float:
    """Metrics are None (JSON) or NaN where a class is absent from a small evaluation set."""
    return float("nan") if value is None else float(value)


def model_limitations(evaluation: dict[str, Any], threshold: float, rule_text: str) -> list[str]:
    """The limits that depend on this model's numbers (so they cannot go stale)."""
    test = evaluation["ptbxl_fold10"]["metrics"]
    rows = {round(r["budget"], 2): r for r in evaluation.get("flag_budgets", [])}
    shipped = next((r for r in rows.values() if r.get("shipped")), rows.get(0.1, {}))
    fold10 = shipped.get("ptbxl_fold10", {})
    flagged = _num(fold10.get("flagged", {}).get("value"))
    sens = _num(fold10.get("sensitivity", {}).get("value"))
    ppv = _num(fold10.get("ppv", {}).get("value"))
    c_by_class = {name: _num(c) for name, c in
                  zip(("normal", "abnormal_not_acute", "subacute", "acute"), test["c"]["value"], strict=False)}
    known = {name: c for name, c in c_by_class.items() if not math.isnan(c)}
    overall = _num(test["overall_c"]["value"][0])
    weakest = (f"; the weakest category is {min(known, key=known.get)} (c {min(known.values()):.2f})"
               if known else "")
    return [
        f"The shipped acute threshold ({threshold:.4g}, chosen on fold 9: the threshold that {rule_text}) "
        f"flags {flagged:.1%} of PTB-XL test ECGs as acute, with acute sensitivity {sens:.3f} and PPV "
        f"{ppv:.2f}: most flags are still false alarms, and about one acute ECG in "
        f"{max(1, round(1 / max(1e-9, 1 - sens)))} is not flagged. Read the flag-budget table and set "
        "`model.acute_flag_budget` to what the ward can absorb.",
        f"Overall c on PTB-XL fold 10 is {overall:.3f}"
        + (" — below the project's 0.90 floor" if not overall >= 0.90 else "")
        + f"{weakest}. Labels carry noise the mapping cannot remove: 13 % of subacute labels rest only on "
        "statements at likelihood 50–80, 1,358 only on an infarct of unknown stadium (triage.md §4).",
    ]


LIMITATIONS = [
    "Labels are NOT the paper's: PTB-XL has no triage label, so ours come from a rule-based "
    "mapping of SCP statements (below) written for this project; several rows are judgement "
    "calls (marked '?' in docs/triage.md §3) and the mapping has not been reviewed by a cardiologist.",
    "The acute class in PTB-XL is small (542 records under mapping 2.0: acute-stage infarcts, AF with a "
    "rapid or slow ventricular response, SVT and high-grade AV block); there is no VT/VF or "
    "definite STEMI statement in PTB-XL, so the model has never seen most life-threatening "
    "arrhythmias and its acute sensitivity for them is unknown.",
    "PTB-XL was recorded 1989–1996 on Schiller devices in Germany; performance on other carts, "
    "filters and populations may differ (see the external CinC results, which are small).",
    "Trained at 100 Hz (PTB-XL's low-rate version): inputs at other rates are resampled by the "
    "daemon; high-frequency detail (pacing spikes, notches) above 50 Hz is lost.",
    "Rate-dependent labels use a simple QRS detector; a few labels can be wrong where it fails.",
    "Probabilities come from a class-weighted focal loss and are not calibrated to prevalence "
    "(see the calibration plots); use the decision policy, not the raw probabilities, as a rule.",
    "The statements are PTB-XL's SCP vocabulary as its cardiologists and the Schiller cart's software "
    "coded it (form statements have no likelihood); a listed statement is the model's estimate, shown "
    "as evidence for a reader, not a diagnosis. Statements a record did not list count as absent even "
    "when present (PTB-XL under-codes descriptors).",
    "The external CinC sample is tiny (about 100 labelled records, few acute): its CIs are wide "
    "and per-category numbers with n < 10 are anecdotal.",
]


TRAINING_NOTE = (
    "Members were trained on this project's 2-core CPU (bf16 autocast, one thread each, two side by "
    "side); the pack step chose the members, the window layout and the aggregation on fold 9 "
    "(`python -m model_training pack`).")

#: How v1 (no crops, no pack step) was chosen; quoted from its first card.
V1_TRAINING_NOTE = (
    "Model selection: four GPU runs (one NVIDIA H100, torch 2.11 + CUDA 13, bf16 autocast) were "
    "compared on the fold-9 score only (under mapping 1.0, its training labels); batch 128 / "
    "plateau, seed 1 was shipped, best epoch 23, 7.3 s per epoch.")

REPRODUCIBILITY = (
    "Seeds are fixed (Python, NumPy, torch, the crop/augmentation generator), so the same command "
    "on the same CPU and software is expected to give the same weights; across CPUs, GPUs or library "
    "versions they differ by the seed-to-seed spread. `evaluate` is deterministic on the CPU "
    "(bootstrap seed 0): rerun on the shipped checkpoint it reproduces every number in this card; "
    "CI (tests/integration/test_training_smoke.py) checks the shipped model's probabilities on 64 fold-10 records "
    "against report/predictions_ptbxl_fold10.npz within 1e-3. Thresholds are re-chosen by `evaluate` "
    "from CPU float32 predictions on fold 9 (the daemon's default device). Training is resumable "
    "(`--resume`: weights, optimiser, one-cycle position and random states are saved every epoch).")

COMMANDS = [
    "python -m model_training cache   # decode PTB-XL once: runs/cache/ptbxl100.npz (~3 min)",
    "python -m model_training labels  # class counts per fold under mapping 2.0 (--mapping 1.0 for v1's)",
    "python -m model_training train --seed 1 --threads 1 --cpu-bf16 --out runs/v2/m1   # one member; "
    "--resume continues a stopped run",
    "python -m model_training pack runs/v2/m1 runs/v2/m2 runs/v2/m3 runs/v2/m4 --out runs/v2/ensemble.pt",
    "python -m model_training evaluate --checkpoint runs/v2/ensemble.pt --ship ecg_gateway/triage/default_model.pt",
]


def _class_weights_text(training: dict[str, Any]) -> str:
    mode = training.get("class_weights", "sqrt")
    return {"none": "no class weights",
            "inverse": "'inverse' class weights (inverse class frequency)"}.get(
        mode, f"'{mode}' class weights (inverse square root of class frequency)")


def _statement_head_text(training: dict[str, Any]) -> str:
    if not training.get("statement_weight"):
        return ""
    where = ("with a hidden layer of its own" if training.get("statement_head") == "own"
             else "on the main head's hidden layer")
    return (f"multi-label SCP-statement head {where} ({training['statement_weight']} × mean BCE over "
            "the 71 statements, likelihood-aware targets: likelihood / 100, 1 where no likelihood is "
            "given), ")


def _oversample_text(training: dict[str, Any]) -> str:
    oversample = training.get("oversample") or {}
    if not oversample:
        return ""
    listed = ", ".join(f"{code} ×{copies}" for code, copies in oversample.items())
    return f"Records listing a rare statement drawn more often per epoch: {listed}. "


def _augmentation_text(training: dict[str, Any]) -> str:
    gain = float(training.get("gain_jitter", 0.2))
    amplitude = (f"gain ±{gain * 100:g} %" if gain
                 else "no gain change (voltage criteria read the recorded voltages)")
    return f"Augmentation: {amplitude}, Gaussian noise ≤ 0.03 mV, baseline wander ≤ 0.15 mV (0.05–0.5 Hz)."


def _schedule_text(training: dict[str, Any]) -> str:
    if training.get("schedule") == "onecycle":
        return f"one-cycle learning rate peaking at {training.get('lr')} (30 % warm-up, cosine down)"
    if training.get("schedule") == "cosine":
        return ("learning rate warmed up linearly over the first epoch, then cosine-decayed to 0 "
                "per step over all epochs")
    return "ReduceLROnPlateau ×0.5 after 3 flat epochs"


def card_texts(card: dict[str, Any], evaluation: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    info = evaluation["cinc_external"].get("info", {})
    training = card["training"].get("training") or {}
    return {
        "intended_use": INTENDED_USE,
        "limitations": model_limitations(evaluation, card["thresholds"]["acute"],
                                         card["threshold_rule_text"]) + LIMITATIONS,
        "model_description": _model_description(card.get("inference") or {}),
        "data_description": (
            "PTB-XL 100 Hz records (Wagner et al. 2020; CC BY 4.0), v1.0.1 content with the 38 "
            "duplicate recordings of the v1.0.3 changelog removed (21,799 records). Folds 1–8 "
            "train, 9 validation (early stopping, acute threshold), 10 test (patient-wise "
            "stratified folds of the dataset). Signals: 8 stored independent leads, µV int16 "
            "(lossless), decoded once into an array cache (`python -m model_training cache`); "
            "the data manifest hash covers the dataset's SHA256SUMS, the kept ecg_ids, folds, "
            "labels and the mapping."),
        "cinc_note": (
            f"{info.get('n_records', '?')} records of shared/data/cinc2021-samples after leaving out "
            "the 27 `HR*` records (they ARE PTB-XL recordings, so not external); "
            f"{info.get('n_unlabelled', '?')} without any mapped SNOMED code dropped; sources "
            f"{info.get('sources', {})}. 500 Hz signals, resampled to 100 Hz and centre-cropped "
            "to 10 s by the daemon's preprocess(). Never used for training or tuning."),
        "training_description": (
            f"Focal loss (γ={training.get('gamma')}) with {_class_weights_text(training)}, auxiliary head "
            f"{training.get('aux_weight', 0.3)}, "
            + _statement_head_text(training)
            + f"{training.get('optimizer', 'adam')} "
            f"(weight decay {training.get('weight_decay', 1e-4)}), batch "
            f"{training.get('batch_size')}, {_schedule_text(training)}, {training.get('epochs')} epochs, "
            "the epoch with the best validation score = mean(overall c, PDI) on fold 9 kept. "
            + (f"Random {training['crop'] / 100:g} s crops of each record per step. " if training.get("crop") else "")
            + _oversample_text(training) + _augmentation_text(training)
            + f" Fold-9 scores {card['training'].get('validation')}. "
            f"{extra.get('training_note', TRAINING_NOTE if training.get('crop') else V1_TRAINING_NOTE)}"),
        "mapping_rules": (
            f"Statements count when their likelihood is ≥ {MIN_LIKELIHOOD:.0f} or 0 (unspecified; "
            "all rhythm/form statements); the record takes the MOST SEVERE category over its "
            "statements; NORM/SR/SARRH give normal only alone, except that a NORM at likelihood 100 "
            "outranks the descriptive statements listed below the table. Infarcts by `infarction_stadium1/2`: "
            "I or I–II → acute, II, II–III or unknown → subacute, III → abnormal not acute. Rate "
            f"rules use the ventricular rate measured on the signal: AFIB/AFLT acute if > "
            f"{AF_RAPID_BPM:.0f} or < {EXTREME_BRADY_BPM:.0f} bpm, SBRAD subacute if < "
            f"{EXTREME_BRADY_BPM:.0f}, STACH acute if > {EXTREME_TACHY_BPM:.0f}. A record with no "
            "counting statement is unlabelled and left out."),
        "reproducibility": extra.get("reproducibility", REPRODUCIBILITY),
    }


def _model_description(inference: dict[str, Any]) -> str:
    members, windows = inference.get("members", 1), inference.get("windows")
    head = ("a concat-pool (mean and max over time) head" if inference.get("head", "pool") == "pool"
            else "the paper's flatten head (fixed 10 s input)")
    n_statements = inference.get("statements", 0)
    statements = (f" and, beside it, {n_statements} SCP-statement probabilities" if n_statements
                  else "; no statement head (results carry an empty statement list)")
    weights = "float16" if inference.get("half", True) else "float32"
    ensemble = (f"An ensemble of {members} members ({weights} weights; probabilities averaged)"
                if members > 1 else f"One network ({weights} weights)")
    reads = (f"{inference.get('windows_per_ecg')} windows of {windows['length'] / 100:g} s every "
             f"{windows['stride'] / 100:g} s (triage probabilities aggregated by {windows['triage']}, "
             f"statements by {windows['statements']})" if windows else "the whole 10 s record")
    return (
        "TriageNet (ecg_gateway/triage/network.py): the residual CNN reconstructed from van de Leur "
        "et al. (JAHA 2020) — 3 stem conv, 16 pre-activation residual blocks with a plain and a dilated "
        f"branch — at 100 Hz on 8 leads (I, II, V1–V6) in mV, no filtering; {head} with two FC "
        "layers outputs the softmax over (normal, abnormal_not_acute, subacute, acute)"
        f"{statements}. {ensemble} reads {reads}. The auxiliary head served training only.")
