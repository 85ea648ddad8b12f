"""The daemon's decision policy, vectorised for evaluation, and the acute threshold choice.

A record is "acute" when ``p_acute >= thresholds["acute"]`` (chosen on validation for a
target sensitivity); otherwise it gets the most probable category (ties -> more urgent).
This mirrors ecg_gateway/triage/decide.py exactly (tests/test_metrics.py checks it), so the
reported sensitivity/PPV are those of the deployed policy.
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
    argmax, ties going to the more urgent category.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    # argmax with ties to the highest index: argmax over the reversed columns
    out = k - 1 - np.argmax(probs[:, ::-1], axis=1)
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
