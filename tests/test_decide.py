"""Decision policy: argmax, thresholds checked from most urgent down, ties to urgency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecg_gateway.ecg import CATEGORY_ORDER, TriageCategory
from ecg_gateway.triage.decide import decide

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
def test_acute_threshold_only_ever_raises_urgency(raw: list[float], limit: float) -> None:
    p = np.array(raw) + 1e-9
    p = p / p.sum()
    plain, tuned = decide(p, {}), decide(p, {"acute": limit})
    assert tuned is ACUTE or tuned is plain
    if p[3] >= limit:
        assert tuned is ACUTE
