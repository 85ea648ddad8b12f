"""Build the shipped model from trained members: windows, aggregation, members, thresholds.

Every choice is made on PTB-XL fold 9 (never fold 10 or CinC), under the training mapping:

1. each member's probabilities are computed once per 2.5 s window (stride 1.25 s), per 5 s
   window (stride 2.5 s) and on the whole record;
2. for each layout (2.5 s windows at a 1.25 s or a 2.5 s stride, 5 s windows at 2.5 s, which
   is how a member trained on 5 s crops is validated, or the whole record) and triage
   aggregation (mean, max), members are added greedily while the fold-9 score (mean of overall
   c and PDI) improves and the cost (members x samples read, in 2.5 s units) stays within
   ``max_cost``;
3. the statement aggregation is the one with the higher fold-9 statement macro-AUC;
4. the acute thresholds per flag budget and the per-statement thresholds come from the
   chosen ensemble's fold-9 outputs as the written checkpoint serves them (float16 weights).

The result is one format-2 checkpoint, weights in float16 (``--full`` keeps float32).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from ecg_gateway.ecg import CATEGORY_ORDER
from ecg_gateway.triage.ensemble import WindowSpec
from ecg_gateway.triage.model import StatementVocabulary, load_model, save_checkpoint
from ecg_gateway.triage.network import TriageNet
from model_training.cache import PtbxlArrays
from model_training.labels import get_mapping, statement_vocabulary
from model_training.metrics import macro_auc
from model_training.policy import ACUTE, FLAG_BUDGETS, budget_threshold, statement_thresholds
from model_training.train import CONTRACT, model_inputs, val_score

log = structlog.get_logger(__name__)
K = len(CATEGORY_ORDER)
#: layout -> (window length, stride) in samples at 100 Hz; None: the whole record
LAYOUTS: dict[str, tuple[int, int] | None] = {"w125": (250, 125), "w250": (250, 250), "w500": (500, 250),
                                              "whole": None}
UNIT = 250  # cost unit: one 2.5 s window's samples


def _finest_stride(length: int) -> int:
    """The stride at which a window length's outputs are computed (every layout's is a multiple)."""
    return min(spec[1] for spec in LAYOUTS.values() if spec is not None and spec[0] == length)


def _picks(layout: str) -> tuple[int, list[int]]:
    """(window length, indices into that length's finest-stride windows) of a windowed layout."""
    spec = LAYOUTS[layout]
    assert spec is not None
    length, stride = spec
    step = stride // _finest_stride(length)
    return length, list(range(0, (CONTRACT.length - length) // _finest_stride(length) + 1, step))


@dataclass
class MemberOutputs:
    run: str
    net: TriageNet
    windows: dict[int, np.ndarray]  # window length -> [N, W, 4 + S] probabilities per window (finest stride)
    whole: np.ndarray  # [N, 4 + S] on the whole record


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.cat((torch.softmax(logits[:, :K], 1), torch.sigmoid(logits[:, K:])), 1).numpy()


@torch.no_grad()
def member_outputs(run: Path, x: torch.Tensor, batch: int = 64) -> MemberOutputs:
    """One trained member's fold-9 outputs per window and on the whole record (eager, fp32),
    kept beside the run (``fold9_outputs.npz``, keyed by the checkpoint's sha256 and the inputs)."""
    model = load_model(run / "model.pt", "cpu", optimize=False)
    net = model.net.eval()
    lengths = sorted({spec[0] for spec in LAYOUTS.values() if spec is not None})
    key = f"{model.sha256}:{x.shape[0]}:{float(x.abs().sum()):.6g}:{lengths}"
    kept = run / "fold9_outputs.npz"
    if kept.is_file():
        data = np.load(kept)
        if str(data["key"]) == key:
            return MemberOutputs(str(run), net, {n: data[f"windows{n}"] for n in lengths}, data["whole"])
    per_window: dict[int, list[np.ndarray]] = {n: [] for n in lengths}
    whole = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        for n in lengths:
            starts = range(0, x.shape[-1] - n + 1, _finest_stride(n))
            per_window[n].append(np.stack([_probs(net(xb[:, :, s:s + n])) for s in starts], axis=1))
        whole.append(_probs(net(xb)))
    out = MemberOutputs(str(run), net, {n: np.concatenate(per_window[n]) for n in lengths},
                        np.concatenate(whole))
    arrays = {"key": np.array(key), "whole": out.whole, **{f"windows{n}": out.windows[n] for n in lengths}}
    np.savez_compressed(kept, **arrays)  # type: ignore[arg-type]
    return out


def combine(members: list[MemberOutputs], layout: str, triage_how: str, statements_how: str) -> np.ndarray:
    """The ensemble's ``[N, 4 + S]`` as :class:`WindowedEnsemble` computes it."""
    if LAYOUTS[layout] is None:
        return np.mean([m.whole for m in members], axis=0)
    length, picks = _picks(layout)
    mean = np.mean([m.windows[length][:, picks] for m in members], axis=0)  # [N, W, 4 + S]
    triage = mean[:, :, :K].mean(1) if triage_how == "mean" else mean[:, :, :K].max(1)
    triage = triage / triage.sum(1, keepdims=True)
    statements = mean[:, :, K:].mean(1) if statements_how == "mean" else mean[:, :, K:].max(1)
    return np.concatenate((triage, statements), axis=1)


def cost(n_members: int, layout: str) -> int:
    if LAYOUTS[layout] is None:
        return n_members * CONTRACT.length // UNIT  # the whole record: 4 units of work
    length, picks = _picks(layout)
    return n_members * len(picks) * length // UNIT


def choose(members: list[MemberOutputs], labels: np.ndarray, truth: np.ndarray,
           max_cost: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The best (layout, aggregation, members) by fold-9 score within ``max_cost``; the table
    of every configuration tried."""
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for layout, how in itertools.product(LAYOUTS, ("mean", "max")):
        if LAYOUTS[layout] is None and how == "max":
            continue
        chosen: list[int] = []
        score = -math.inf
        while True:
            options = [i for i in range(len(members)) if i not in chosen
                       and cost(len(chosen) + 1, layout) <= max_cost]
            scored = [(val_score(labels, combine([members[j] for j in [*chosen, i]], layout, how, "max")),
                       i) for i in options]
            if not scored:
                break
            top, i = max(scored, key=lambda si: si[0]["score"])
            if top["score"] <= score:
                break
            chosen, score = [*chosen, i], top["score"]
            tried.append({"layout": layout, "triage": how, "members": list(chosen), **top})
        if best is None or score > best["score"]:
            best = {"layout": layout, "triage": how, "members": chosen, "score": score}
    assert best is not None
    picked = [members[i] for i in best["members"]]
    aucs = {how: macro_auc(truth, combine(picked, best["layout"], best["triage"], how)[:, K:])
            for how in ("mean", "max")}
    best["statements"] = max(aucs, key=lambda h: aucs[h])
    best["statement_auc"] = aucs[best["statements"]]
    return best, tried


def pack(runs: list[Path], arrays: PtbxlArrays, out: Path, *, mapping: str = "2.0", max_cost: int = 16,
         half: bool = True, model_id: str = "ecg-triage-ptbxl100-v2") -> dict[str, Any]:
    """Choose on fold 9, write ``out`` (format 2) and ``out``.json (the choices); returns them."""
    va = arrays.with_mapping(mapping)
    va = va.subset((va.fold == 9) & (va.label >= 0))
    labels, truth = va.label.astype(np.int64), va.statement_truth()
    x = torch.from_numpy(model_inputs(va))
    members = [member_outputs(run, x) for run in runs]
    best, tried = choose(members, labels, truth, max_cost)
    picked = [members[i] for i in best["members"]]
    probs = combine(picked, best["layout"], best["triage"], best["statements"])
    windows = None
    spec = LAYOUTS[best["layout"]]
    if spec is not None:
        windows = WindowSpec(spec[0], spec[1], best["triage"], best["statements"])
    # pooled members read any length: each is declared for what the layout gives it (a member
    # trained on 5 s crops may read 2.5 s windows, and every member reads the whole record)
    nets = [_relength(m.net, CONTRACT.length if spec is None else spec[0]) for m in picked]
    # the operating points come from the checkpoint as served (float16 weights, the serving
    # lanes), not from the float32 choice above: a 10 % budget must flag 10 % of what serving
    # computes (2026-12-07: float16 moved the ECG at the 10 % boundary below a float32 threshold)
    write = functools.partial(save_checkpoint, out, nets, CONTRACT, windows=windows, half=half)
    provisional = statement_vocabulary(mapping)
    write(statements=StatementVocabulary.from_dict({**provisional, "thresholds": [0.5] * len(provisional["codes"])}))
    probs = served_outputs(out, x)
    budgets = {b: budget_threshold(probs[:, :K], b) for b in FLAG_BUDGETS}
    vocabulary = StatementVocabulary.from_dict(
        {**statement_vocabulary(mapping), "thresholds": statement_thresholds(truth, probs[:, K:])})
    flagged = probs[:, K - 1] >= budgets[0.10]
    summary = {"model_id": model_id, "mapping_version": get_mapping(mapping).version,
               "members": [m.run for m in picked], "candidates": [m.run for m in members],
               "layout": best["layout"], "triage_aggregation": best["triage"],
               "statement_aggregation": best["statements"], "max_cost": max_cost,
               "fold9": {**val_score(labels, probs, truth), "acute_sensitivity_at_10pct":
                         float(flagged[labels == K - 1].mean()), "flagged_at_10pct": float(flagged.mean())},
               "flag_budgets": {f"{b:g}": t for b, t in budgets.items()}, "tried": tried}
    metadata = {"model_id": model_id, "placeholder": False, "mapping_version": summary["mapping_version"],
                "data_manifest_hash": va.manifest_hash, "members": summary["members"],
                "selection": {k: summary[k] for k in ("layout", "triage_aggregation",
                                                       "statement_aggregation", "max_cost")},
                "validation": {k: float(v) for k, v in summary["fold9"].items()}, "metrics": None,
                "training": _training_config(picked[0].run), "git_revision": _git_revision(picked[0].run)}
    sha = write(thresholds={ACUTE: budgets[0.10]}, metadata=metadata, statements=vocabulary,
                flag_budgets=budgets)
    summary.update(sha256=sha, bytes=out.stat().st_size)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    log.info("packed", **{k: summary[k] for k in ("layout", "triage_aggregation", "statement_aggregation",
                                                   "bytes")}, members=len(nets), **summary["fold9"])
    return summary


def served_outputs(checkpoint: Path, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """``[N, 4 + S]`` as ``serve`` computes them from ``checkpoint`` (CPU, float32 lanes)."""
    model = load_model(checkpoint, "cpu")
    parts = [np.concatenate(model.predict_full(x[i:i + batch].numpy()), axis=1)
             for i in range(0, x.shape[0], batch)]
    return np.concatenate(parts)


def _relength(net: TriageNet, length: int) -> TriageNet:
    """The same pooled net declared for ``length``-sample inputs (weights unchanged)."""
    if net.arch_kwargs()["length"] == length:
        return net
    other = TriageNet(**{**net.arch_kwargs(), "length": length}).eval()
    other.load_state_dict(net.state_dict())
    return other


def _git_revision(run: str) -> str | None:
    """The revision of the code that trained the (first) member, as its summary recorded it."""
    summary = Path(run) / "summary.json"
    return json.loads(summary.read_text()).get("git_revision") if summary.is_file() else None


def _training_config(run: str) -> dict[str, Any]:
    summary = Path(run) / "summary.json"
    if not summary.is_file():
        return {}
    config = json.loads(summary.read_text())["config"]
    return {k: config[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "schedule", "optimizer",
                                   "crop", "head", "statement_weight", "statement_targets", "mapping",
                                   "gamma", "class_weights", "aux_weight", "cpu_bf16", "statement_head",
                                   "gain_jitter", "dropout", "oversample", "seed") if k in config}
