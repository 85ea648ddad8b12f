"""The decision policy evaluated here: the acute threshold first, then the most probable.

A record is "acute" when ``p_acute >= thresholds["acute"]`` (chosen on validation for a
target sensitivity); otherwise it gets the most probable of the other three categories.
Without an acute threshold the policy is the plain argmax. The daemon's decision step must
apply the same rule for the reported sensitivity/PPV to hold.
"""

from __future__ import annotations

import math

import numpy as np

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory

ACUTE = TriageCategory.ACUTE.value
ACUTE_INDEX = CATEGORY_ORDER.index(TriageCategory.ACUTE)


def decide(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """``[N, 4]`` probabilities (CATEGORY_ORDER) -> ``[N]`` decided category indices."""
    probs = np.asarray(probs, dtype=np.float64)
    t = thresholds.get(ACUTE)
    if t is None:
        return probs.argmax(axis=1)
    others = probs.copy()
    others[:, ACUTE_INDEX] = -np.inf
    return np.where(probs[:, ACUTE_INDEX] >= t, ACUTE_INDEX, others.argmax(axis=1))


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
