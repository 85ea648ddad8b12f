"""Evaluate a trained checkpoint end to end, write the model card, and ship it.

``run`` = load the checkpoint → (re)choose the acute threshold on fold 9 with the CPU model
→ fold 10 and CinC metrics with bootstrap CIs → plots → MODEL_CARD.md/.json → optionally
write the shipped checkpoint with metrics in its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ecg_gateway.ecg import CATEGORY_ORDER
from ecg_gateway.triage.model import file_sha256, load_model, save_checkpoint
from model_training import cache as cache_mod
from model_training.card import write_card
from model_training.datasets import CincDataset
from model_training.evaluate import (
    Predictions,
    evaluate_set,
    plot_calibration,
    plot_roc,
    predict_ecgs,
)
from model_training.labels import MAPPING_VERSION, deciding_statements, triage_category
from model_training.policy import ACUTE, ACUTE_INDEX, acute_threshold, decide
from model_training.snomed import SNOMED_VERSION

log = structlog.get_logger(__name__)
NAMES = [c.value for c in CATEGORY_ORDER]


def class_counts_per_fold(arrays: cache_mod.PtbxlArrays) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for fold in [*sorted(set(arrays.fold.tolist())), "all"]:
        mask = np.ones_like(arrays.fold, dtype=bool) if fold == "all" else arrays.fold == fold
        labels = arrays.label[mask]
        row = {name: int((labels == k).sum()) for k, name in enumerate(NAMES)}
        row.update(unlabelled=int((labels < 0).sum()), total=int(mask.sum()))
        out[str(fold)] = row
    return out


def label_sources(table: Any, arrays: cache_mod.PtbxlArrays) -> dict[str, dict[str, int]]:
    """Per category, how many records each statement puts there (a record with two deciding
    statements counts for both), over the records of ``arrays``; ``table`` is the PTB-XL CSV
    (:func:`model_training.datasets.load_ptbxl_table`) and the rate rules use the cached rates."""
    out: dict[str, dict[str, int]] = {name: {} for name in NAMES}
    for ecg_id, rate in zip(arrays.ecg_id.tolist(), arrays.heart_rate.tolist()):
        row = {**table.loc[ecg_id].to_dict(), "heart_rate_bpm": rate}
        codes = deciding_statements(row["scp_codes"], row)
        if not codes:
            continue
        counts = out[triage_category(row["scp_codes"], row).value]
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    return {name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for name, c in out.items()}


def ptbxl_predictions(model, arrays: cache_mod.PtbxlArrays, fold: int, name: str) -> Predictions:  # noqa: ANN001
    sub = arrays.subset((arrays.fold == fold) & (arrays.label >= 0))
    ecgs = [sub.ecg(i) for i in range(len(sub.ecg_id))]
    return Predictions(name, sub.label.astype(np.int64), predict_ecgs(model, ecgs),
                       [str(int(x)) for x in sub.ecg_id])


def cinc_predictions(model, root: Path) -> tuple[Predictions, dict[str, Any]]:  # noqa: ANN001
    ds = CincDataset(root, exclude_ptbxl=True)
    items = [ds[i] for i in range(len(ds))]
    kept = [x for x in items if x.label is not None]
    sources: dict[str, int] = {}
    for x in kept:
        sources[x.meta["source"]] = sources.get(x.meta["source"], 0) + 1
    info = {"n_records": len(items), "n_unlabelled": len(items) - len(kept), "sources": sources}
    labels = np.array([CATEGORY_ORDER.index(x.label) for x in kept], dtype=np.int64)
    probs = predict_ecgs(model, [x.ecg for x in kept])
    return Predictions("cinc_external", labels, probs, [x.key for x in kept]), info


def run(checkpoint: Path, cache_path: Path, cinc_root: Path, report_dir: Path, card_stem: Path, *,
        n_boot: int = 1000, seed: int = 0, target_sensitivity: float = 0.95,
        threshold_rule: str = "point", ship_to: Path | None = None, commands: list[str] | None = None,
        extra: dict[str, Any] | None = None, ptbxl_root: Path | None = None) -> dict[str, Any]:
    model = load_model(checkpoint, device="cpu")
    arrays = cache_mod.load(cache_path)
    report_dir.mkdir(parents=True, exist_ok=True)
    val = ptbxl_predictions(model, arrays, 9, "ptbxl_fold9")
    threshold = acute_threshold(val.labels, val.probs, target_sensitivity, threshold_rule)
    thresholds = {**model.thresholds, ACUTE: threshold}
    val_sens = float(np.mean(decide(val.probs, thresholds)[val.labels == ACUTE_INDEX] == ACUTE_INDEX))
    test = ptbxl_predictions(model, arrays, 10, "ptbxl_fold10")
    cinc, cinc_info = cinc_predictions(model, cinc_root)
    evaluation = {}
    for pred in (test, cinc):
        res = evaluate_set(pred, thresholds, n_boot, seed)
        plot_roc(pred, res, report_dir / f"roc_{pred.name}.png")
        plot_calibration(pred, res, report_dir / f"calibration_{pred.name}.png")
        np.savez_compressed(report_dir / f"predictions_{pred.name}.npz", probs=pred.probs,
                            labels=pred.labels, keys=np.array(pred.keys))
        evaluation[pred.name] = res
        log.info("evaluated", set=pred.name, n=res["n"], overall_c=res["metrics"]["overall_c"]["value"],
                 pdi=res["metrics"]["pdi"]["value"])
    evaluation["cinc_external"]["info"] = cinc_info
    evaluation["acute_operating_points"] = operating_points(
        val, [test, cinc], (threshold_rule, target_sensitivity, threshold))
    meta = dict(model.metadata)
    card = build_card(meta, thresholds, (threshold_rule, target_sensitivity, val_sens), arrays, evaluation,
                      commands or [], extra or {})
    if ptbxl_root is not None:  # which statements make each category, for the mapping's review
        from model_training.datasets import load_ptbxl_table

        card["label_sources"] = label_sources(load_ptbxl_table(ptbxl_root), arrays)
    if ship_to is not None:
        meta.update(placeholder=False, metrics=compact_metrics(evaluation), acute_threshold_source=(
            f"PTB-XL fold 9, {rule_text(threshold_rule, target_sensitivity)}, CPU fp32 predictions"),
            mapping_version=MAPPING_VERSION, snomed_version=SNOMED_VERSION)
        card["sha256"] = save_checkpoint(ship_to, model.net, model.contract, thresholds=thresholds,
                                         metadata=meta)
        card["checkpoint_bytes"] = ship_to.stat().st_size
    else:
        card["sha256"] = file_sha256(checkpoint)
    write_card(card, card_stem.with_suffix(".md"), card_stem.with_suffix(".json"))
    return card


def rule_text(rule: str, target: float) -> str:
    """How the threshold was chosen, in words (card, checkpoint metadata)."""
    if rule == "point":
        return f"sensitivity >= {target}"
    return f"lower bootstrap bound (2.5th percentile) of sensitivity >= {target}"


def operating_points(val: Predictions, tests: list[Predictions], shipped: tuple[str, float, float],
                     targets: tuple[float, ...] = (0.80, 0.85, 0.90, 0.95)) -> list[dict[str, Any]]:
    """Acute flag ``p_acute >= t`` applied to each set, with t chosen on fold 9 by the point rule
    per target sensitivity, by the lower-bound rule at the shipped target, and the shipped t."""
    rule, shipped_target, shipped_t = shipped
    choices = [("point", target) for target in sorted({*targets, shipped_target})]
    choices.append(("lower-bound", shipped_target))  # the margin's cost, whichever rule shipped
    rows = []
    for rule_name, target in choices:
        shipped_row = (rule_name, target) == (rule, shipped_target)
        t = shipped_t if shipped_row else acute_threshold(val.labels, val.probs, target, rule_name)
        row: dict[str, Any] = {"target_sensitivity": target, "threshold": t, "rule": rule_name,
                               "shipped": shipped_row}
        for pred in tests:
            flag, pos = pred.probs[:, ACUTE_INDEX] >= t, pred.labels == ACUTE_INDEX
            tp, fp = int((flag & pos).sum()), int((flag & ~pos).sum())
            row[pred.name] = {
                "sensitivity": tp / max(1, int(pos.sum())),
                "specificity": int((~flag & ~pos).sum()) / max(1, int((~pos).sum())),
                "ppv": tp / max(1, tp + fp), "flagged_fraction": float(flag.mean())}
        rows.append(row)
    return rows


def compact_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (value and CI) in plain types, for the checkpoint metadata."""
    out = {}
    for name, res in evaluation.items():
        if "metrics" not in res:
            continue
        m = res["metrics"]
        out[name] = {"n": res["n"], **{key: {"value": m[key]["value"], "ci_low": m[key]["ci_low"],
                                             "ci_high": m[key]["ci_high"]}
                                       for key in ("overall_c", "pdi", "c", "sensitivity", "specificity",
                                                   "ppv", "npv")}}
    return out


def build_card(meta: dict[str, Any], thresholds: dict[str, float], choice: tuple[str, float, float],
               arrays: cache_mod.PtbxlArrays, evaluation: dict[str, Any], commands: list[str],
               extra: dict[str, Any]) -> dict[str, Any]:
    from model_training.card_text import COMMANDS, card_texts

    rule, target, val_sens = choice  # how the acute threshold was chosen, and its fold-9 sensitivity
    test = evaluation["ptbxl_fold10"]["metrics"]
    c, p = test["overall_c"]["value"][0], test["pdi"]["value"][0]
    sens = test["sensitivity"]["value"][ACUTE_INDEX]
    card = {
        "model_id": meta.get("model_id"), "placeholder": False, "git_revision": meta.get("git_revision"),
        "mapping_version": MAPPING_VERSION, "snomed_version": SNOMED_VERSION,
        "data_manifest_hash": arrays.manifest_hash, "thresholds": thresholds,
        "target_sensitivity": target, "threshold_rule": rule,
        "threshold_rule_text": rule_text(rule, target), "val_acute_sensitivity": val_sens,
        "class_counts_per_fold": class_counts_per_fold(arrays), "evaluation": evaluation,
        "training": {k: meta.get(k) for k in ("training", "validation", "best_epoch")},
        "targets": [_target("overall c", c, 0.90, 0.93), _target("PDI", p, 0.70, 0.80),
                    _target("acute sensitivity at the shipped threshold", sens, 0.95, None)],
        "commands": commands or COMMANDS,
    }
    card.update(card_texts(card, evaluation, extra))
    return card


def _target(name: str, value: float | None, floor: float, aim: float | None) -> str:
    if value is None:
        return f"{name}: undefined on this set"
    text = f"{name} {value:.3f}: floor {floor:.2f} {'met' if value >= floor else 'NOT met'}"
    return text + (f", aim {aim:.2f} {'met' if value >= aim else 'not met'}" if aim is not None else "")


def dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
