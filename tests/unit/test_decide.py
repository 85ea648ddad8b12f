"""Decision policy: argmax, thresholds checked from most urgent down, ties to urgency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory
from ecg_gateway.triage.decide import decide, explain

N, ANA, SUB, ACUTE = CATEGORY_ORDER


@pytest.mark.parametrize("probs, thresholds, want", [
    ([0.7, 0.1, 0.1, 0.1], {}, N),
    ([0.1, 0.6, 0.2, 0.1], {}, ANA),
    ([0.1, 0.2, 0.6, 0.1], {}, SUB),
    ([0.6, 0.1, 0.1, 0.2], {"acute": 0.2}, ACUTE),      # sensitive acute operating point
    ([0.6, 0.1, 0.11, 0.19], {"acute": 0.2}, N),
    ([0.5, 0.1, 0.3, 0.1], {"acute": 0.2, "subacute": 0.3}, SUB),
    ([0.3, 0.1, 0.3, 0.3], {"acute": 0.3, "subacute": 0.3}, ACUTE),  # most urgent checked first
    ([0.4, 0.4, 0.1, 0.1], {}, ANA),                     # tie goes to the more urgent
    ([0.25, 0.25, 0.25, 0.25], {}, ACUTE),
])
def test_policy(probs: list[float], thresholds: dict[str, float], want: TriageCategory) -> None:
    assert decide(np.array(probs), thresholds) is want


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        decide(np.array([0.5, 0.5, np.nan, 0.0]), {})
    with pytest.raises(ValueError, match="4 finite"):
        decide(np.array([0.5, 0.5]), {})
    with pytest.raises(ValueError, match="unknown category"):
        decide(np.array([0.7, 0.1, 0.1, 0.1]), {"stemi": 0.1})
    with pytest.raises(ValueError, match="probability"):
        decide(np.array([0.7, 0.1, 0.1, 0.1]), {"acute": 1.2})


@given(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.floats(0, 1))
def test_the_acute_flag_is_exactly_its_operating_point(raw: list[float], limit: float) -> None:
    """With a threshold, "acute" means p(acute) >= t and nothing else (the flag budget holds);
    below it, the argmax of the other three decides."""
    p = np.array(raw) + 1e-9
    p = p / p.sum()
    tuned = decide(p, {"acute": limit})
    assert (tuned is ACUTE) == (p[3] >= limit)
    if tuned is not ACUTE:
        assert tuned is decide(np.array([*p[:3], 0.0]), {})


@pytest.mark.parametrize("probs, thresholds, budget, text", [
    ([0.5, 0.1, 0.09, 0.31], {"acute": 0.12}, 0.1,
     "p(acute) 0.31 ≥ 0.12, the threshold that flags 10 % of ECGs"),
    ([0.2, 0.1, 0.62, 0.08], {"acute": 0.12}, 0.1,
     "the most probable category, p(subacute) 0.62; p(acute) 0.08 < 0.12, "
     "the threshold that flags 10 % of ECGs"),
    ([0.9, 0.09, 0.0096, 0.0004], {"acute": 0.0033}, None,
     "the most probable category, p(normal) 0.90; p(acute) < 0.001 < 0.003"),
    ([0.6, 0.1, 0.1, 0.2], {"acute": 0.2}, None, "p(acute) 0.20 ≥ 0.20, the configured threshold"),
    ([0.1, 0.7, 0.1, 0.1], {}, None, "the most probable category, p(abnormal_not_acute) 0.70"),
])
def test_the_impression_says_which_rule_fired(probs: list[float], thresholds: dict[str, float],
                                             budget: float | None, text: str) -> None:
    p = np.array(probs)
    rule = explain(p, thresholds, decide(p, thresholds), budget)
    assert rule.text == text and "p=0.00" not in rule.text and "0.00 " not in rule.text
    assert rule.rule == ("threshold" if decide(p, thresholds) is ACUTE else "argmax")
