"""The daemon's decision policy, vectorised for evaluation, and the acute threshold choice.

A record is "acute" when ``p_acute >= thresholds["acute"]`` (chosen on validation for a flag
budget or a target sensitivity); otherwise it gets the most probable of the categories
without a threshold (ties -> more urgent).
This mirrors ecg_gateway/triage/decide.py exactly (tests/integration/test_metrics.py checks
it), so the reported sensitivity/PPV are those of the deployed policy.
"""

from __future__ import annotations

import math

import numpy as np

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory

ACUTE = TriageCategory.ACUTE.value
ACUTE_INDEX = CATEGORY_ORDER.index(TriageCategory.ACUTE)


def decide(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """``[N, 4]`` probabilities (CATEGORY_ORDER) -> ``[N]`` decided category indices.

    Vectorised mirror of :func:`ecg_gateway.triage.decide.decide` (the daemon's policy):
    thresholded categories from most to least urgent, the first reached wins; otherwise the
    argmax over the categories without a threshold, ties going to the more urgent category.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    open_ = np.array([CATEGORY_ORDER[j].value not in thresholds for j in range(k)])
    masked = np.where(open_ if open_.any() else np.ones(k, dtype=bool), probs, -np.inf)
    # argmax with ties to the highest index: argmax over the reversed columns
    out = k - 1 - np.argmax(masked[:, ::-1], axis=1)
    decided = np.zeros(len(probs), dtype=bool)
    result = out.copy()
    for index in reversed(range(k)):
        limit = thresholds.get(CATEGORY_ORDER[index].value)
        if limit is None:
            continue
        hit = ~decided & (probs[:, index] >= limit)
        result[hit] = index
        decided |= hit
    return result


def choose_acute_threshold(labels: np.ndarray, probs: np.ndarray, target: float = 0.95) -> float:
    """Largest threshold whose sensitivity for acute on (labels, probs) is >= ``target``.

    With n acute cases, at least ceil(target * n) of them must score >= t, so t is the
    ceil(target * n)-th highest p_acute among them. No acute case -> 0.5 (documented default).
    """
    p_pos = np.sort(np.asarray(probs)[np.asarray(labels) == ACUTE_INDEX, ACUTE_INDEX])[::-1]
    if p_pos.size == 0:
        return 0.5
    need = max(1, math.ceil(target * p_pos.size - 1e-9))
    return float(np.clip(p_pos[need - 1], 0.0, 1.0))


def budget_threshold(probs: np.ndarray, budget: float) -> float:
    """The acute threshold that flags a ``budget`` share of these ECGs (triage.md §5): the
    (1 - budget) quantile of p(acute), so that ``p >= t`` holds for about that share."""
    p = np.sort(np.asarray(probs)[:, ACUTE_INDEX])
    if p.size == 0:
        return 0.5
    k = int(math.ceil(budget * p.size - 1e-9))  # flag the k highest
    return float(np.clip(p[p.size - max(1, k)], 0.0, 1.0))


FLAG_BUDGETS = (0.05, 0.10, 0.15, 0.20)
#: A statement is never reported below this probability, whatever its fold-9 optimum.
MIN_STATEMENT_THRESHOLD = 0.1


def statement_thresholds(truth: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per statement, the threshold with the best F1 on these (fold-9) records, at least
    :data:`MIN_STATEMENT_THRESHOLD`; 1.0 (never reported) for a statement absent here."""
    out = []
    for j in range(truth.shape[1]):
        y, p = truth[:, j].astype(bool), probs[:, j].astype(np.float64)
        if not y.any():
            out.append(1.0)
            continue
        order = np.argsort(-p)
        tp = np.cumsum(y[order])
        f1 = 2 * tp / (np.arange(1, p.size + 1) + y.sum())  # flag the top k: 2TP / (k + P)
        best = int(np.argmax(f1))
        out.append(float(np.clip(p[order][best], MIN_STATEMENT_THRESHOLD, 1.0)))
    return out
THRESHOLD_RULES = ("point", "lower-bound")


def choose_acute_threshold_with_margin(labels: np.ndarray, probs: np.ndarray, target: float = 0.95, *,
                                       n_boot: int = 1000, seed: int = 0, quantile: float = 0.025) -> float:
    """Largest threshold whose *lower bootstrap bound* of acute sensitivity is >= ``target``.

    The point rule (:func:`choose_acute_threshold`) hits the target on validation and misses
    it on the next fold about half the time when acute cases are few. Here the acute cases
    are resampled ``n_boot`` times and t is the highest acute score at which the ``quantile``
    of the resampled sensitivities still reaches ``target``. No acute case -> 0.5. It is
    reported beside the point rule, not shipped by default: with a long tail of low-scored
    acute ECGs it flags most ECGs (decision 33).
    """
    p_pos = np.sort(np.asarray(probs)[np.asarray(labels) == ACUTE_INDEX, ACUTE_INDEX])[::-1]
    n = p_pos.size
    if n == 0:
        return 0.5
    rng = np.random.default_rng(seed)
    # counts[b, j]: how often the j-th highest acute score is drawn in resample b; flagging the
    # top k cases gives sensitivity cumsum(counts)[:, k-1] / n in each resample
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
    lower = np.quantile(np.cumsum(counts, axis=1) / n, quantile, axis=0)
    k = int(np.argmax(lower >= target - 1e-12)) if np.any(lower >= target - 1e-12) else n - 1
    return float(np.clip(p_pos[k], 0.0, 1.0))


def acute_threshold(labels: np.ndarray, probs: np.ndarray, target: float, rule: str) -> float:
    """The acute threshold under a named rule of :data:`THRESHOLD_RULES`."""
    if rule == "point":
        return choose_acute_threshold(labels, probs, target)
    if rule == "lower-bound":
        return choose_acute_threshold_with_margin(labels, probs, target)
    raise ValueError(f"unknown threshold rule {rule!r}; expected one of {THRESHOLD_RULES}")
