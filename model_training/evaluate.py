"""Evaluate a checkpoint: PTB-XL fold 10 and the CinC external set, with bootstrap CIs and plots.

The model is run exactly as the daemon runs it: ``load_model`` + ``preprocess`` with the
checkpoint's own contract, on the CPU (fp32), and categories are decided by
:func:`model_training.policy.decide` with the checkpoint's thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ecg_gateway.ecg import CATEGORY_NAMES, Ecg
from ecg_gateway.triage.model import TriageModel
from ecg_gateway.triage.preprocess import preprocess
from model_training.metrics import bootstrap, calibration_bins, confusion
from model_training.policy import decide

log = structlog.get_logger(__name__)
K = len(CATEGORY_NAMES)


@dataclass
class Predictions:
    name: str
    labels: np.ndarray  # int, CATEGORY_ORDER index
    probs: np.ndarray  # [N, 4]
    keys: list[str]


def predict_ecgs(model: TriageModel, ecgs: list[Ecg], batch_size: int = 256) -> np.ndarray:
    return predict_ecgs_full(model, ecgs, batch_size)[0]


def predict_ecgs_full(model: TriageModel, ecgs: list[Ecg], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Triage ``[N, 4]`` and statement ``[N, S]`` probabilities, as the daemon computes them."""
    triage, statements = [], []
    for start in range(0, len(ecgs), batch_size):
        batch = np.stack([preprocess(e, model.contract) for e in ecgs[start:start + batch_size]])
        t, s = model.predict_full(batch)
        triage.append(t)
        statements.append(s)
    if not triage:
        return np.zeros((0, K), dtype=np.float32), np.zeros((0, model.n_statements), dtype=np.float32)
    return np.concatenate(triage), np.concatenate(statements)


def evaluate_set(pred: Predictions, thresholds: dict[str, float], n_boot: int, seed: int) -> dict[str, Any]:
    """Point estimates + bootstrap CIs + confusion matrix + calibration of one test set."""
    decided = decide(pred.probs, thresholds)
    boot = bootstrap(pred.labels, pred.probs, decided, n_resamples=n_boot, seed=seed)
    calib = {name: calibration_bins((pred.labels == k).astype(float), pred.probs[:, k])
             for k, name in enumerate(CATEGORY_NAMES)}
    return {
        "name": pred.name, "n": int(pred.labels.size),
        "class_counts": dict(zip(CATEGORY_NAMES, np.bincount(pred.labels, minlength=K).tolist(), strict=True)),
        "metrics": boot, "confusion": confusion(pred.labels, decided, K).tolist(),
        "confusion_axes": "rows = reference category, columns = decided category, order " + ", ".join(CATEGORY_NAMES),
        "calibration": calib, "n_bootstrap": n_boot, "bootstrap_seed": seed,
    }


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def plot_roc(pred: Predictions, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    c_values = result["metrics"]["c"]["value"]
    for k, name in enumerate(CATEGORY_NAMES):
        y = pred.labels == k
        if y.all() or not y.any():
            continue
        fpr, tpr = roc_points(y, pred.probs[:, k])
        c_text = "n/a" if c_values[k] is None else f"{c_values[k]:.3f}"
        ax.plot(fpr, tpr, label=f"{name} (c={c_text}, n={int(y.sum())})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"One-vs-rest ROC: {pred.name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(pred: Predictions, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name in CATEGORY_NAMES:
        cal = result["calibration"][name]
        ax.plot(cal["mean_predicted"], cal["observed"], marker="o", ms=3,
                label=f"{name} (ECE={cal['ece'][0]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="mean predicted probability (decile bins)", ylabel="observed frequency",
           title=f"Calibration: {pred.name}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
