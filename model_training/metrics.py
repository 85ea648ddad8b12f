"""Discrimination and decision metrics of van de Leur et al. (JAHA 2020), with bootstrap CIs.

* c-statistic per category: one-vs-rest AUC of p_k, computed from ranks (ties = 1/2).
* overall c: the UNWEIGHTED MEAN of the per-category one-vs-rest c-statistics (macro).
* PDI (Van Calster et al., Stat Med 2012): draw one case per category; PDI_i is the
  probability that the case of category i has the highest p_i of the k cases; PDI is the
  mean of PDI_i. Ties are shared: a case tied with m others at the maximum scores 1/(m+1).
* sensitivity, specificity, PPV, NPV per category of the decided category (one-vs-rest).

Everything is vectorised over records so 1,000 bootstrap resamples take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """One-vs-rest AUC (c-statistic) of boolean ``y`` by the rank-sum formula; NaN if degenerate."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the columns (statements) with both classes present, as the
    PTB-XL benchmark's macro-AUC; NaN when no column qualifies."""
    values = [auc(truth[:, j], scores[:, j]) for j in range(truth.shape[1])
              if 0 < int(truth[:, j].sum()) < truth.shape[0]]
    return float(np.mean(values)) if values else float("nan")


def per_class_c(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.array([auc(labels == k, probs[:, k]) for k in range(probs.shape[1])])


def overall_c(labels: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of the per-category one-vs-rest c (NaN categories are skipped)."""
    values = per_class_c(labels, probs)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan


def pdi_per_class(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """PDI_i for every category i (NaN for an absent category, and all NaN if any is absent).

    For a case a of category i and each other category j, count cases of j with a lower
    (g_j) and an equal (e_j) p_i. Expanding prod_j (g_j + e_j x) gives, as the coefficient
    of x^m, the number of k-tuples where a ties with m others at the top; each scores 1/(m+1).
    """
    k = probs.shape[1]
    counts = np.array([(labels == j).sum() for j in range(k)])
    if np.any(counts == 0):
        return np.full(k, math.nan)
    out = np.empty(k)
    for i in range(k):
        score_a = probs[labels == i, i]
        poly = np.ones((score_a.size, 1))  # coefficients in x, lowest first
        for j in range(k):
            if j == i:
                continue
            other = np.sort(probs[labels == j, i])
            lower = np.searchsorted(other, score_a, side="left")
            equal = np.searchsorted(other, score_a, side="right") - lower
            nxt = np.zeros((score_a.size, poly.shape[1] + 1))
            nxt[:, :-1] += poly * lower[:, None]
            nxt[:, 1:] += poly * equal[:, None]
            poly = nxt
        weights = 1.0 / np.arange(1, poly.shape[1] + 1)
        out[i] = (poly @ weights).sum() / np.prod(counts.astype(float))
    return out


def pdi(labels: np.ndarray, probs: np.ndarray) -> float:
    """Polytomous discrimination index: mean of :func:`pdi_per_class` (1/k = chance)."""
    return float(np.mean(pdi_per_class(labels, probs)))


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrix, rows = true category, columns = decided category."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def decision_stats(labels: np.ndarray, predicted: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-category one-vs-rest sensitivity, specificity, PPV and NPV of the decisions."""
    cm = confusion(labels, predicted, k).astype(float)
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Reliability curve on equal-count bins of p, plus expected calibration error and Brier."""
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, n_bins) if c.size]
    mean_p = [float(p[c].mean()) for c in chunks]
    frac = [float(y[c].mean()) for c in chunks]
    sizes = [c.size for c in chunks]
    ece = float(sum(s * abs(a - b) for s, a, b in zip(sizes, mean_p, frac, strict=True)) / max(1, p.size))
    return {"mean_predicted": mean_p, "observed": frac, "n": [float(s) for s in sizes],
            "ece": [ece], "brier": [float(np.mean((p - y) ** 2))]}


def point_metrics(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """All scalar/vector metrics of one (re)sample, as a flat dict of arrays."""
    k = probs.shape[1]
    out = {"c": per_class_c(labels, probs), "overall_c": np.array([overall_c(labels, probs)]),
           "pdi_class": pdi_per_class(labels, probs)}
    out["pdi"] = np.array([np.mean(out["pdi_class"])])
    out.update(decision_stats(labels, predicted, k))
    return out


def bootstrap(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray, *,
              n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
              fn: Callable[..., dict[str, np.ndarray]] = point_metrics) -> dict[str, dict[str, list]]:
    """Point estimate and percentile CI of every metric over record-level resamples.

    Resamples where a metric is undefined (e.g. no acute case drawn) are skipped for that
    metric; ``n_valid`` says how many remained.
    """
    rng = np.random.default_rng(seed)
    point = fn(labels, probs, predicted)
    draws: dict[str, list[np.ndarray]] = {key: [] for key in point}
    n = labels.size
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = fn(labels[idx], probs[idx], predicted[idx])
        for key, value in res.items():
            draws[key].append(value)
    out: dict[str, dict[str, list]] = {}
    for key, value in point.items():
        stack = np.vstack(draws[key])
        valid = ~np.isnan(stack)
        with np.errstate(invalid="ignore"), _quiet():
            lo = np.nanpercentile(stack, 100 * alpha / 2, axis=0)
            hi = np.nanpercentile(stack, 100 * (1 - alpha / 2), axis=0)
        out[key] = {"value": _list(value), "ci_low": _list(lo), "ci_high": _list(hi),
                    "n_valid": valid.sum(axis=0).tolist()}
    return out


def _list(a: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(x)) else round(float(x), 6) for x in np.atleast_1d(a)]


class _quiet:
    """Silence numpy's all-NaN-slice warnings (a category absent from every resample)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
