"""Probabilities + the checkpoint's thresholds → triage category (pure).

Policy: categories that have a threshold are checked from most to least urgent, and the
first whose probability reaches its threshold wins; this is how the acute class gets an
operating point tuned for sensitivity ("acute" at, say, 0.15 instead of the argmax).
Otherwise the argmax wins, a tie going to the more urgent category — a triage error
towards urgency costs a look, the other way costs time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory

_NAMES = tuple(c.value for c in CATEGORY_ORDER)


def check_thresholds(thresholds: Mapping[str, float]) -> None:
    """Raise ValueError unless every key is a category and every value is in [0, 1]."""
    for name, value in thresholds.items():
        if name not in _NAMES:
            raise ValueError(f"threshold for unknown category {name!r}; known: {list(_NAMES)}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold {name}={value} is not a probability")


def decide(probs: np.ndarray, thresholds: Mapping[str, float]) -> TriageCategory:
    """``probs``: 4 probabilities in CATEGORY_ORDER."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(CATEGORY_ORDER),) or not np.all(np.isfinite(p)):
        raise ValueError(f"need {len(CATEGORY_ORDER)} finite probabilities, got {p.tolist()}")
    check_thresholds(thresholds)
    for index in reversed(range(len(CATEGORY_ORDER))):  # most urgent first
        limit = thresholds.get(_NAMES[index])
        if limit is not None and p[index] >= limit:
            return CATEGORY_ORDER[index]
    best = np.flatnonzero(p == p.max())
    return CATEGORY_ORDER[int(best[-1])]
