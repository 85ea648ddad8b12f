"""Evaluate a trained checkpoint end to end, write the model card, and ship it.

``run`` = load the checkpoint → (re)choose the acute threshold on fold 9 with the CPU model
→ fold 10 and CinC metrics with bootstrap CIs → plots → MODEL_CARD.md/.json → optionally
write the shipped checkpoint with metrics in its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ecg_gateway.ecg import CATEGORY_NAMES, CATEGORY_ORDER
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
    predict_ecgs_full,
)
from model_training.labels import (
    DEFAULT_MAPPING,
    MAPPING_VERSION,
    deciding_statements,
    triage_category,
)
from model_training.metrics import auc, bootstrap, macro_auc, overall_c, pdi
from model_training.policy import (
    ACUTE,
    ACUTE_INDEX,
    FLAG_BUDGETS,
    acute_threshold,
    budget_threshold,
    decide,
)
from model_training.snomed import SNOMED_VERSION

log = structlog.get_logger(__name__)


def class_counts_per_fold(arrays: cache_mod.PtbxlArrays) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for fold in [*sorted(set(arrays.fold.tolist())), "all"]:
        mask = np.ones_like(arrays.fold, dtype=bool) if fold == "all" else arrays.fold == fold
        labels = arrays.label[mask]
        row = {name: int((labels == k).sum()) for k, name in enumerate(CATEGORY_NAMES)}
        row.update(unlabelled=int((labels < 0).sum()), total=int(mask.sum()))
        out[str(fold)] = row
    return out


def label_sources(table: Any, arrays: cache_mod.PtbxlArrays) -> dict[str, dict[str, int]]:
    """Per category, how many records each statement puts there (a record with two deciding
    statements counts for both), over the records of ``arrays``; ``table`` is the PTB-XL CSV
    (:func:`model_training.datasets.load_ptbxl_table`) and the rate rules use the cached rates."""
    out: dict[str, dict[str, int]] = {name: {} for name in CATEGORY_NAMES}
    for ecg_id, rate in zip(arrays.ecg_id.tolist(), arrays.heart_rate.tolist(), strict=True):
        row = {**table.loc[ecg_id].to_dict(), "heart_rate_bpm": rate}
        codes = deciding_statements(row["scp_codes"], row, arrays.mapping_version)
        if not codes:
            continue
        counts = out[triage_category(row["scp_codes"], row, arrays.mapping_version).value]
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    return {name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for name, c in out.items()}


def fold_predictions(model, arrays: cache_mod.PtbxlArrays, fold: int, name: str,
                     ) -> tuple[Predictions, np.ndarray, np.ndarray | None]:
    """Triage predictions of one fold (labels of ``arrays``' mapping), its statement
    probabilities and the statements' binary truth (None for an old cache)."""
    sub = arrays.subset((arrays.fold == fold) & (arrays.label >= 0))
    ecgs = [sub.ecg(i) for i in range(len(sub.ecg_id))]
    probs, statements = predict_ecgs_full(model, ecgs)
    truth = sub.statement_truth() if sub.likelihoods is not None else None
    return Predictions(name, sub.label.astype(np.int64), probs, [str(int(x)) for x in sub.ecg_id]), statements, truth


def ptbxl_predictions(model, arrays: cache_mod.PtbxlArrays, fold: int, name: str) -> Predictions:
    return fold_predictions(model, arrays, fold, name)[0]


def relabel(pred: Predictions, arrays: cache_mod.PtbxlArrays, name: str) -> Predictions:
    """The same records and probabilities with the labels of ``arrays``' mapping."""
    index = {int(e): i for i, e in enumerate(arrays.ecg_id)}
    labels = np.array([arrays.label[index[int(k)]] for k in pred.keys], dtype=np.int64)
    keep = labels >= 0
    return Predictions(name, labels[keep], pred.probs[keep], [k for k, m in zip(pred.keys, keep, strict=True) if m])


def cinc_predictions(model, root: Path, mapping: str = DEFAULT_MAPPING) -> tuple[Predictions, dict[str, Any]]:
    ds = CincDataset(root, exclude_ptbxl=True, mapping=mapping)
    items = [ds[i] for i in range(len(ds))]
    kept = [x for x in items if x.label is not None]
    sources: dict[str, int] = {}
    for x in kept:
        sources[x.meta["source"]] = sources.get(x.meta["source"], 0) + 1
    info = {"n_records": len(items), "n_unlabelled": len(items) - len(kept), "sources": sources}
    labels = np.array([CATEGORY_ORDER.index(x.label) for x in kept], dtype=np.int64)
    probs = predict_ecgs(model, [x.ecg for x in kept])
    return Predictions("cinc_external", labels, probs, [x.key for x in kept]), info


def _flag_stats(pos: np.ndarray, flag: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    p, f = pos[idx], flag[idx]
    tp = float((p & f).sum())
    return {"sensitivity": np.array([tp / p.sum() if p.any() else np.nan]),
            "ppv": np.array([tp / f.sum() if f.any() else np.nan]),
            "flagged": np.array([f.mean()])}


def budget_table(val: Predictions, tests: list[Predictions], budgets: dict[float, float], shipped: float,
                 n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per flag budget: the fold-9 threshold, and on each test set the acute sensitivity, PPV
    and share flagged (``p_acute >= t``) with percentile bootstrap CIs."""
    rows = []
    for budget, t in sorted(budgets.items()):
        row: dict[str, Any] = {"budget": budget, "threshold": t, "shipped": budget == shipped,
                               "fold9_flagged": float((val.probs[:, ACUTE_INDEX] >= t).mean())}
        for pred in tests:
            pos, flag = pred.labels == ACUTE_INDEX, pred.probs[:, ACUTE_INDEX] >= t
            order = np.arange(pos.size)
            res = bootstrap(order, pred.probs, order, n_resamples=n_boot, seed=seed,
                            fn=lambda idx, _p, _d, pos=pos, flag=flag: _flag_stats(pos, flag, idx))
            row[pred.name] = {k: {"value": v["value"][0], "ci_low": v["ci_low"][0], "ci_high": v["ci_high"][0]}
                              for k, v in res.items()}
            row[pred.name]["n_acute"] = int(pos.sum())
        rows.append(row)
    return rows


def statement_evaluation(truth: np.ndarray, probs: np.ndarray, codes: list[str], n_boot: int,
                         seed: int) -> dict[str, Any]:
    """Macro-AUC over the statements present in this set, with a bootstrap CI, and each
    statement's AUC (the PTB-XL benchmark's "all statements" score)."""
    order = np.arange(truth.shape[0])
    res = bootstrap(order, probs, order, n_resamples=n_boot, seed=seed,
                    fn=lambda idx, _p, _d: {"macro_auc": np.array([macro_auc(truth[idx], probs[idx])])})
    present = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < truth.shape[0]]
    per = [{"code": codes[j], "n": int(truth[:, j].sum()), "auc": auc(truth[:, j], probs[:, j])}
           for j in present]
    return {"macro_auc": {k: res["macro_auc"][k][0] for k in ("value", "ci_low", "ci_high")},
            "n_statements": len(present), "n_records": int(truth.shape[0]), "n_bootstrap": n_boot,
            "per_statement": sorted(per, key=lambda r: -r["n"])}


def fold9_summary(val: Predictions, thresholds: dict[str, float], budgets: dict[float, float]) -> dict[str, Any]:
    """What the shipping rule (decisions.md 38) reads: fold-9 score and acute sensitivity at
    the 10 % budget, and the same at the shipped threshold."""
    pos = val.labels == ACUTE_INDEX
    at = {"budget_10pct": budgets.get(0.1), "shipped": thresholds[ACUTE]}
    out: dict[str, Any] = val_score_of(val)
    for key, t in at.items():
        if t is None:
            continue
        flag = val.probs[:, ACUTE_INDEX] >= t
        out[f"acute_sensitivity_{key}"] = float(flag[pos].mean()) if pos.any() else None
        out[f"flagged_{key}"] = float(flag.mean())
    out["n_acute"] = int(pos.sum())
    return out


def val_score_of(pred: Predictions) -> dict[str, float]:
    c, p = overall_c(pred.labels, pred.probs), pdi(pred.labels, pred.probs)
    return {"overall_c": c, "pdi": p, "score": float(np.mean([c, p]))}


def _evaluate_and_plot(pred: Predictions, thresholds: dict[str, float], n_boot: int, seed: int,
                       report_dir: Path, plots: bool = True) -> dict[str, Any]:
    res = evaluate_set(pred, thresholds, n_boot, seed)
    if plots:
        plot_roc(pred, res, report_dir / f"roc_{pred.name}.png")
        plot_calibration(pred, res, report_dir / f"calibration_{pred.name}.png")
        np.savez_compressed(report_dir / f"predictions_{pred.name}.npz", probs=pred.probs,
                            labels=pred.labels, keys=np.array(pred.keys))
    log.info("evaluated", set=pred.name, n=res["n"], overall_c=res["metrics"]["overall_c"]["value"],
             pdi=res["metrics"]["pdi"]["value"])
    return res


def choose_thresholds(model, val: Predictions, rule: str, budget: float,
                      target_sensitivity: float) -> tuple[dict[str, float], dict[float, float], str]:
    """The acute threshold from fold 9 (a flag budget, or a sensitivity target), the thresholds
    of every flag budget, and the rule in words."""
    budgets = {b: budget_threshold(val.probs, b) for b in sorted({*FLAG_BUDGETS, budget})}
    if rule == "budget":
        acute, text = budgets[budget], f"flags {budget:.0%} of fold-9 ECGs"
    else:
        acute = acute_threshold(val.labels, val.probs, target_sensitivity, rule)
        text = rule_text(rule, target_sensitivity)
    return {**model.thresholds, ACUTE: acute}, budgets, text


def run(checkpoint: Path, cache_path: Path, cinc_root: Path, report_dir: Path, card_stem: Path, *,
        n_boot: int = 1000, seed: int = 0, target_sensitivity: float = 0.95,
        threshold_rule: str = "budget", budget: float = 0.10, ship_to: Path | None = None,
        commands: list[str] | None = None, extra: dict[str, Any] | None = None,
        ptbxl_root: Path | None = None) -> dict[str, Any]:
    model = load_model(checkpoint, device="cpu")
    arrays = cache_mod.load(cache_path)
    primary, old = arrays.with_mapping(DEFAULT_MAPPING), arrays.with_mapping("1.0")
    report_dir.mkdir(parents=True, exist_ok=True)
    val, _, _ = fold_predictions(model, primary, 9, "ptbxl_fold9")
    thresholds, budgets, rule_words = choose_thresholds(model, val, threshold_rule, budget, target_sensitivity)
    val_sens = float(np.mean(decide(val.probs, thresholds)[val.labels == ACUTE_INDEX] == ACUTE_INDEX))
    test, test_statements, truth = fold_predictions(model, primary, 10, "ptbxl_fold10")
    cinc, cinc_info = cinc_predictions(model, cinc_root)
    evaluation: dict[str, Any] = {"ptbxl_fold9": fold9_summary(val, thresholds, budgets)}
    for pred in (test, cinc):
        evaluation[pred.name] = _evaluate_and_plot(pred, thresholds, n_boot, seed, report_dir)
    evaluation["cinc_external"]["info"] = cinc_info
    test_old = relabel(test, old, "ptbxl_fold10_mapping_1_0")
    evaluation[test_old.name] = _evaluate_and_plot(test_old, thresholds, n_boot, seed, report_dir, plots=False)
    evaluation["flag_budgets"] = budget_table(val, [test, cinc], budgets, budget if threshold_rule == "budget"
                                              else -1.0, n_boot, seed)
    evaluation["acute_operating_points"] = operating_points(
        val, [test, cinc], (threshold_rule, target_sensitivity, thresholds[ACUTE]))
    if model.statements is not None and truth is not None:
        evaluation["statements_fold10"] = statement_evaluation(
            truth, test_statements, list(model.statements.codes), min(n_boot, 300), seed)
    meta = dict(model.metadata)
    # the labels the network was trained on; the first export records them (v1: 1.0)
    meta.setdefault("trained_mapping_version", meta.get("mapping_version"))
    card = build_card(meta, thresholds, (threshold_rule, rule_words, val_sens), arrays, evaluation,
                      commands or [], extra or {}, model, half=_has_half_weights(checkpoint))
    if ptbxl_root is not None:  # which statements make each category, for the mapping's review
        from model_training.datasets import load_ptbxl_table

        card["label_sources"] = label_sources(load_ptbxl_table(ptbxl_root), primary)
    if ship_to is not None:
        meta.update(placeholder=False, metrics=compact_metrics(evaluation), acute_threshold_source=(
            f"PTB-XL fold 9, {rule_words}, CPU fp32 predictions"),
            mapping_version=MAPPING_VERSION, snomed_version=SNOMED_VERSION)
        card["sha256"] = save_checkpoint(ship_to, model.members, model.contract, thresholds=thresholds,
                                         metadata=meta, windows=model.windows, statements=model.statements,
                                         flag_budgets=budgets, half=_has_half_weights(checkpoint))
        card["checkpoint_bytes"] = ship_to.stat().st_size
    else:
        card["sha256"] = file_sha256(checkpoint)
        card["checkpoint_bytes"] = checkpoint.stat().st_size
    write_card(card, card_stem.with_suffix(".md"), card_stem.with_suffix(".json"))
    return card


def _has_half_weights(path: Path) -> bool:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    members = payload.get("members") or [payload.get("state_dict", {})]
    return any(v.dtype == torch.float16 for v in members[0].values())


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


def build_card(meta: dict[str, Any], thresholds: dict[str, float], choice: tuple[str, str, float],
               arrays: cache_mod.PtbxlArrays, evaluation: dict[str, Any], commands: list[str],
               extra: dict[str, Any], model: Any = None, half: bool = True) -> dict[str, Any]:
    from model_training.card_text import COMMANDS, card_texts

    rule, words, val_sens = choice  # how the acute threshold was chosen, and its fold-9 sensitivity
    test = evaluation["ptbxl_fold10"]["metrics"]
    c, p = test["overall_c"]["value"][0], test["pdi"]["value"][0]
    shipped = next((r for r in evaluation["flag_budgets"] if r["shipped"]), None)
    statements = evaluation.get("statements_fold10", {}).get("macro_auc", {}).get("value")
    targets = [_target("overall c", c, 0.90, 0.93), _target("PDI", p, 0.76, 0.80)]
    if shipped is not None:
        fold10 = shipped["ptbxl_fold10"]
        targets.append(_target(f"acute sensitivity at the {shipped['budget']:.0%} budget "
                               f"({fold10['flagged']['value']:.1%} of fold 10 flagged)",
                               fold10["sensitivity"]["value"], 0.90, None))
    targets.append(_target("statement macro-AUC", statements, 0.925, 0.93))
    card = {
        "model_id": meta.get("model_id"), "placeholder": False, "git_revision": meta.get("git_revision"),
        "mapping_version": MAPPING_VERSION, "snomed_version": SNOMED_VERSION,
        "trained_mapping_version": meta.get("trained_mapping_version", MAPPING_VERSION),
        "data_manifest_hash": arrays.with_mapping(DEFAULT_MAPPING).manifest_hash, "thresholds": thresholds,
        "threshold_rule": rule, "threshold_rule_text": words, "val_acute_sensitivity": val_sens,
        "class_counts_per_fold": class_counts_per_fold(arrays.with_mapping(DEFAULT_MAPPING)),
        "class_counts_per_fold_mapping_1_0": class_counts_per_fold(arrays.with_mapping("1.0")),
        "evaluation": evaluation,
        "training": {k: meta.get(k) for k in ("training", "validation", "best_epoch", "members", "selection")},
        "inference": {**_inference_description(model), "half": half},
        "targets": targets,
        "commands": commands or COMMANDS,
    }
    card.update(card_texts(card, evaluation, extra))
    return card


def _inference_description(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    from ecg_gateway.triage.network import ConcatPool

    windows = model.windows
    head = "pool" if isinstance(model.members[0].head[0], ConcatPool) else "flatten"
    return {"members": len(model.members), "statements": model.n_statements, "head": head,
            "windows": windows.to_dict() if windows is not None else None,
            "windows_per_ecg": windows.count(model.contract.length) if windows is not None else 1}


def _target(name: str, value: float | None, floor: float, aim: float | None) -> str:
    if value is None:
        return f"{name}: undefined on this set"
    text = f"{name} {value:.3f}: floor {floor:g} {'met' if value >= floor else 'NOT met'}"
    return text + (f", aim {aim:g} {'met' if value >= aim else 'not met'}" if aim is not None else "")
