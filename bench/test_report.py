"""How the results file judges goals: misses are stated against the goal's own threshold."""

from __future__ import annotations

import math

from bench._common import figure
from bench.report import chaos_report, missed_by
from bench.scaling import late_growth_kb, worker_goal


def test_a_missed_latency_goal_is_stated_against_its_threshold_not_the_anchor() -> None:
    fig = figure("hl7.x.p99", "ACK p99", "ms", [53.3, 52.2, 55.6], anchor=[800.0] * 3, anchor_name="python-hl7",
                 higher_is_better=False, goal="< 50 ms", goal_met=False, goal_value=50.0)
    assert missed_by(fig) == "measured 53.3 against 50.0: 7% over"


def test_a_missed_ratio_goal_compares_the_measured_ratio() -> None:
    fig = figure("inference.cpu.t2.b32", "inference", "ECG/s", [1068.0], anchor=[3468.0], goal="60%",
                 goal_met=False, goal_value=0.60, goal_measured=0.31)
    assert missed_by(fig) == "measured 0.31 against 0.60: 48% short"


def test_memory_growth_is_the_slope_of_the_second_half() -> None:
    warm_then_flat = [(1000, 400.0), (2000, 450.0), (3000, 480.0), (4000, 500.0), (5000, 500.0),
                      (6000, 500.0), (7000, 500.0), (8000, 500.0), (9000, 500.0), (10000, 500.0)]
    assert late_growth_kb(warm_then_flat) == 0.0
    leaking = [(n, 400.0 + n * 4 / 1024) for n in range(1000, 10001, 1000)]  # 4 KB per ECG
    assert math.isclose(late_growth_kb(leaking), 4.0)


def test_workers_must_scale_up_to_the_cores_and_not_collapse_past_them() -> None:
    rates = {1: 63.7, 2: 91.0, 3: 82.0}
    text, value, measured = worker_goal(rates, 2, cores=2)
    assert value == 1.4 and math.isclose(measured, 91.0 / 63.7) and "scales" in text
    text, value, measured = worker_goal(rates, 3, cores=2)
    assert value == 0.85 and math.isclose(measured, 82.0 / 91.0) and "more processes" in text
    assert worker_goal(rates, 1, cores=2)[0] is None


def test_chaos_record_becomes_a_zero_loss_goal() -> None:
    report = chaos_report({"ecgs": 1000, "kills": 95, "lost": 0, "ack_latency_p99_s": 2.7}, exit_status=0)
    lost = report["figures"][0]
    assert lost["goal"]["met"] is True and lost["ours"]["median"] == 0
    assert "all hold" in report["notes"][0]
    assert chaos_report({"lost": 3}, exit_status=1)["figures"][0]["goal"]["met"] is False
