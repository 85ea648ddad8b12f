"""Metrics: PDI against hand-computed cases and brute force, AUC, bootstrap, decision policy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model_training.metrics import (
    auc,
    bootstrap,
    calibration_bins,
    confusion,
    decision_stats,
    overall_c,
    pdi,
    pdi_per_class,
    per_class_c,
)
from model_training.policy import (
    ACUTE_INDEX,
    acute_threshold,
    choose_acute_threshold,
    choose_acute_threshold_with_margin,
    decide,
)

# Hand case: two normal ECGs (a1, a2) and one of each other category (b, c, d).
# The 4-tuples are (a1, b, c, d) and (a2, b, c, d).
#   PDI_0 on p_normal: a1 0.7 beats .3/.1/.25 (win); a2 0.2 loses to b's 0.3 -> 1/2
#   PDI_1 on p_ana:    b 0.4 beats a1 .1, c .2, d .25 (win); loses to a2's 0.5 -> 1/2
#   PDI_2 on p_sub:    c 0.6 beats everyone in both tuples -> 1
#   PDI_3 on p_acute:  d 0.25 beats .1/.1/.1 in both tuples -> 1
#   PDI = (0.5 + 0.5 + 1 + 1) / 4 = 0.75
HAND_LABELS = np.array([0, 0, 1, 2, 3])
HAND_PROBS = np.array([
    [0.70, 0.10, 0.10, 0.10],  # a1
    [0.20, 0.50, 0.20, 0.10],  # a2
    [0.30, 0.40, 0.20, 0.10],  # b
    [0.10, 0.20, 0.60, 0.10],  # c
    [0.25, 0.25, 0.25, 0.25],  # d
])


def test_pdi_hand_computed_case() -> None:
    assert pdi_per_class(HAND_LABELS, HAND_PROBS) == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert pdi(HAND_LABELS, HAND_PROBS) == pytest.approx(0.75)


def test_pdi_hand_computed_case_with_ties() -> None:
    # d = [0.3, 0.3, 0.3, 0.1]: on p_acute d ties 4-way with a_i, b, c (all 0.1): 1/4 per tuple.
    # PDI_0: a1 0.7 > .3 still wins, a2 loses -> 1/2; PDI_1: b .4 > d .3 -> unchanged 1/2;
    # PDI_2: c .6 > d .3 -> 1. PDI = (0.5 + 0.5 + 1 + 0.25) / 4 = 0.5625
    probs = HAND_PROBS.copy()
    probs[4] = [0.3, 0.3, 0.3, 0.1]
    assert pdi_per_class(HAND_LABELS, probs) == pytest.approx([0.5, 0.5, 1.0, 0.25])
    assert pdi(HAND_LABELS, probs) == pytest.approx(0.5625)


def _brute_pdi(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    groups = [np.flatnonzero(labels == j) for j in range(k)]
    out = []
    for i in range(k):
        scores = []
        for combo in itertools.product(*groups):
            vals = probs[list(combo), i]
            scores.append(0.0 if (vals > vals[i]).any() else 1.0 / np.sum(vals == vals[i]))
        out.append(np.mean(scores))
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_pdi_equals_brute_force_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.arange(4), rng.integers(0, 4, 10)]
    probs = np.round(rng.dirichlet(np.ones(4), labels.size), 1)  # rounding makes ties
    assert pdi_per_class(labels, probs) == pytest.approx(_brute_pdi(labels, probs))


def test_pdi_bounds() -> None:
    labels = np.repeat(np.arange(4), 50)
    assert pdi(labels, np.eye(4)[labels]) == pytest.approx(1.0)
    assert pdi(labels, np.full((200, 4), 0.25)) == pytest.approx(0.25)  # all tied = chance
    assert np.isnan(pdi(np.array([0, 1, 2]), np.eye(4)[[0, 1, 2]]))  # a category is absent


def test_auc_matches_sklearn_and_overall_c_is_the_macro_mean() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300) + 0.3 * np.eye(4)[labels]
    for k in range(4):
        assert auc(labels == k, probs[:, k]) == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
    assert overall_c(labels, probs) == pytest.approx(np.mean(per_class_c(labels, probs)))
    assert np.isnan(auc(np.ones(5, bool), np.arange(5.0)))


def test_decision_stats_hand_case() -> None:
    labels = np.array([0, 0, 1, 1, 3, 3])
    decided = np.array([0, 1, 1, 1, 3, 0])
    cm = confusion(labels, decided, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]
    stats = decision_stats(labels, decided, 4)
    assert stats["sensitivity"][3] == pytest.approx(0.5)  # 1 of 2 acute
    assert stats["specificity"][3] == pytest.approx(1.0)
    assert stats["ppv"][0] == pytest.approx(0.5) and stats["npv"][0] == pytest.approx(3 / 4)
    assert np.isnan(stats["sensitivity"][2])


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400) + 0.5 * np.eye(4)[labels]
    probs /= probs.sum(axis=1, keepdims=True)
    decided = decide(probs, {"acute": 0.3})
    first = bootstrap(labels, probs, decided, n_resamples=1000, seed=7)
    assert first == bootstrap(labels, probs, decided, n_resamples=1000, seed=7)
    for key in ("overall_c", "pdi"):
        m = first[key]
        assert m["ci_low"][0] < m["value"][0] < m["ci_high"][0] and m["n_valid"] == [1000]
    assert 0.01 < first["pdi"]["ci_high"][0] - first["pdi"]["ci_low"][0] < 0.2
    rare = labels.copy()
    rare[rare == 3] = 2
    rare[:2] = 3  # 2 acute cases: many resamples draw none
    res = bootstrap(rare, probs, decided, n_resamples=300, seed=0)
    assert 0 < res["c"]["n_valid"][3] < 300


def test_acute_threshold_reaches_the_target_sensitivity() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 1000)
    probs = rng.dirichlet(np.ones(4), 1000) + 0.4 * np.eye(4)[labels]
    probs /= probs.sum(axis=1, keepdims=True)
    t = choose_acute_threshold(labels, probs, 0.95)
    decided = decide(probs, {"acute": t})
    sens = np.mean(decided[labels == ACUTE_INDEX] == ACUTE_INDEX)
    assert sens >= 0.95
    # a slightly higher threshold catches fewer acute cases by the threshold alone
    pos = probs[labels == ACUTE_INDEX, ACUTE_INDEX]
    assert np.mean(pos >= t) >= 0.95 > np.mean(pos >= t + 1e-6)
    assert (decide(probs, {}) == probs.argmax(axis=1)).all()
    assert (decided[probs[:, ACUTE_INDEX] >= t] == ACUTE_INDEX).all()


def test_policy_mirrors_the_daemon_decide() -> None:
    from ecg_gateway.ecg import CATEGORY_ORDER
    from ecg_gateway.triage.decide import decide as daemon_decide

    rng = np.random.default_rng(4)
    probs = np.round(rng.dirichlet(np.ones(4) * 0.7, 500), 2)  # rounding makes ties
    for thresholds in ({}, {"acute": 0.1}, {"acute": 0.4, "subacute": 0.3}):
        ours = decide(probs, thresholds)
        theirs = [CATEGORY_ORDER.index(daemon_decide(p, thresholds)) for p in probs]
        assert ours.tolist() == theirs


def test_calibration_bins() -> None:
    p = np.linspace(0, 1, 1000)
    y = (np.random.default_rng(0).random(1000) < p).astype(float)
    cal = calibration_bins(y, p)
    assert len(cal["observed"]) == 10 and cal["ece"][0] < 0.08
    assert calibration_bins(np.zeros(100), np.ones(100))["ece"][0] == pytest.approx(1.0)


def test_acute_threshold_with_margin_tolerates_one_miss_in_90() -> None:
    """90 acute cases (a PTB-XL fold): missing 1 keeps the bootstrap 2.5th percentile of
    sensitivity >= 0.95 (87/90 at worst), missing 2 does not (85/90), so the margin rule sits
    at the second-lowest acute score where the point rule allows 4 misses (86/90 >= 0.95)."""
    rng = np.random.default_rng(5)
    labels = np.r_[np.full(90, ACUTE_INDEX), np.zeros(900, dtype=int)]
    probs = rng.dirichlet(np.ones(4), labels.size)
    scores = np.sort(probs[labels == ACUTE_INDEX, ACUTE_INDEX])
    t = choose_acute_threshold_with_margin(labels, probs, 0.95)
    assert t == scores[1] == acute_threshold(labels, probs, 0.95, "lower-bound")
    point = choose_acute_threshold(labels, probs, 0.95)
    assert point == scores[4] == acute_threshold(labels, probs, 0.95, "point")
    assert choose_acute_threshold_with_margin(labels[90:], probs[90:]) == 0.5  # no acute case
    with pytest.raises(ValueError, match="unknown threshold rule"):
        acute_threshold(labels, probs, 0.95, "median")
