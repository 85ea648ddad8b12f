"""Probabilities + the checkpoint's thresholds → triage category, and the rule in words (pure).

Policy: categories that have a threshold are checked from most to least urgent, and the
first whose probability reaches its threshold wins; this is how the acute class gets an
operating point (a flag budget: the threshold that flags, say, 10 % of ECGs). A category
with a threshold is only ever reached through it, so the flag rate is the operating point's.
Otherwise the argmax over the other categories wins, a tie going to the more urgent one — a
triage error towards urgency costs a look, the other way costs time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ecg_gateway.ecg import CATEGORY_NAMES, CATEGORY_ORDER, TriageCategory
from ecg_gateway.evidence import DecisionRule


def check_thresholds(thresholds: Mapping[str, float]) -> None:
    """Raise ValueError unless every key is a category and every value is in [0, 1]."""
    for name, value in thresholds.items():
        if name not in CATEGORY_NAMES:
            raise ValueError(f"threshold for unknown category {name!r}; known: {list(CATEGORY_NAMES)}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold {name}={value} is not a probability")


def decide(probs: np.ndarray, thresholds: Mapping[str, float]) -> TriageCategory:
    """``probs``: 4 probabilities in CATEGORY_ORDER."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(CATEGORY_ORDER),) or not np.all(np.isfinite(p)):
        raise ValueError(f"need {len(CATEGORY_ORDER)} finite probabilities, got {p.tolist()}")
    check_thresholds(thresholds)
    for index in reversed(range(len(CATEGORY_ORDER))):  # most urgent first
        limit = thresholds.get(CATEGORY_NAMES[index])
        if limit is not None and p[index] >= limit:
            return CATEGORY_ORDER[index]
    open_ = np.array([name not in thresholds for name in CATEGORY_NAMES])
    if not open_.any():  # every category has a threshold and none was reached: plain argmax
        open_[:] = True
    masked = np.where(open_, p, -np.inf)
    best = np.flatnonzero(masked == masked.max())
    return CATEGORY_ORDER[int(best[-1])]


def format_probability(p: float) -> str:
    """Two decimals, three below 0.01, and never a bare 0.00 for a non-zero value."""
    if p >= 0.01:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    return "< 0.001"


def explain(probs: np.ndarray, thresholds: Mapping[str, float], category: TriageCategory,
            flag_budget: float | None = None) -> DecisionRule:
    """Which rule set ``category`` (as :func:`decide` chose it), in words for the impression
    after the category's name, e.g. "p(acute) 0.31 ≥ 0.12, the threshold that flags 10 % of ECGs"."""
    p = {name: float(v) for name, v in zip(CATEGORY_NAMES, np.asarray(probs, dtype=np.float64), strict=True)}
    name = category.value
    limit = thresholds.get(name)
    if limit is not None and p[name] >= limit:
        source = (f"the threshold that flags {flag_budget * 100:g} % of ECGs" if flag_budget is not None
                  and name == TriageCategory.ACUTE.value else "the configured threshold")
        text = f"p({name}) {format_probability(p[name])} ≥ {format_probability(limit)}, {source}"
        return DecisionRule("threshold", text, threshold=float(limit), flag_budget=flag_budget)
    text = f"the most probable category, p({name}) {format_probability(p[name])}"
    acute = TriageCategory.ACUTE.value
    if acute in thresholds:
        text += f"; p({acute}) {format_probability(p[acute])} < {format_probability(thresholds[acute])}"
        if flag_budget is not None:
            text += f", the threshold that flags {flag_budget * 100:g} % of ECGs"
    return DecisionRule("argmax", text, threshold=thresholds.get(acute), flag_budget=flag_budget)
