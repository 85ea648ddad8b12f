"""Global ECG measurements: real recordings against their carts, and what is never invented."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import INDEPENDENT_LEADS, Ecg
from ecg_gateway.inbound.decode import decode_file
from ecg_gateway.measure import measure
from ecg_gateway.triage.model import load_model
from ecg_gateway.triage.service import Triager
from tests.support import synthetic
from tests.support.paths import shared_data

# (file, cart's rate, PR, QRS, QT, P/QRS/T axis) as the files state them (bench/measurements.py)
CARTS = [
    (("vendor-xml", "ge-muse", "easyRecg_muse_ecg1.xml"), 60, 158, 78, 364, 49, 54, 46),
    (("vendor-xml", "ge-muse", "MUSE_20200923_093504_79000_example.xml"), 56, 330, 94, 434, 6, -22, 2),
    (("dicom-ecg", "pydicom_waveform_ecg.dcm"), 61, 161, 75, 368, 74, 52, 57),
    (("aecg", "hl7_2003-12_Example_aECG.xml"), None, 148, 120, 420, 44, -61, 86),
]


def _angle(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize(("parts", "rate", "pr", "qrs", "qt", "p_axis", "qrs_axis", "t_axis"), CARTS,
                         ids=[c[0][-1] for c in CARTS])
def test_real_recordings_agree_with_their_cart(parts: tuple[str, ...], rate: float | None, pr: float,
                                               qrs: float, qt: float, p_axis: float, qrs_axis: float,
                                               t_axis: float) -> None:
    m = measure(decode_file(shared_data(*parts)))
    if rate is not None:
        assert m.heart_rate_bpm == pytest.approx(rate, abs=2)
    assert m.pr_ms == pytest.approx(pr, abs=20)
    assert m.qrs_ms == pytest.approx(qrs, abs=15)
    assert m.qt_ms == pytest.approx(qt, abs=40)
    assert _angle(m.qrs_axis_deg, qrs_axis) <= 20 and _angle(m.t_axis_deg, t_axis) <= 20
    assert _angle(m.p_axis_deg, p_axis) <= 60
    rr_s = 60.0 / m.heart_rate_bpm
    assert m.qtc_bazett_ms == pytest.approx(m.qt_ms / rr_s ** 0.5)
    assert m.qtc_fridericia_ms == pytest.approx(m.qt_ms / rr_s ** (1 / 3))


def _no_p_waves(seed: int = 3, bpm: float = 75.0) -> Ecg:
    """Sinus-like beats without P waves (as in atrial fibrillation, but regular)."""
    ecg = synthetic.synthetic_ecg(seed, bpm=bpm)
    fs, t = ecg.fs, np.arange(ecg.n_samples) / ecg.fs
    base = np.zeros_like(t)
    for beat in np.arange(0.4, t[-1], 60.0 / bpm):
        for centre, width, amp in ((-0.03, 0.010, -0.1), (0.0, 0.012, 1.0), (0.03, 0.010, -0.25),
                                   (0.25, 0.045, 0.3)):
            base += amp * np.exp(-0.5 * ((t - beat - centre) / width) ** 2)
    gains = np.linspace(0.6, 1.4, 8)[:, None]
    noise = np.random.default_rng(seed).normal(scale=0.01, size=(8, t.size))
    return Ecg(gains * base + noise, fs, INDEPENDENT_LEADS, "synthetic")


def test_no_p_wave_means_no_pr_and_no_p_axis_never_a_guess() -> None:
    m = measure(_no_p_waves())
    assert m.pr_ms is None and m.p_axis_deg is None
    assert m.heart_rate_bpm == pytest.approx(75.0, abs=1.0)
    assert m.qrs_ms is not None and m.qt_ms is not None


def test_what_cannot_be_measured_is_absent() -> None:
    assert measure(synthetic.flat_line(0)).to_json() == {}
    short = synthetic.synthetic_ecg(1, seconds=1.5)
    assert measure(short).to_json() == {}  # too short for three beats
    eight_leads_no_ii = Ecg(np.zeros((7, 5000)), 500, INDEPENDENT_LEADS[:1] + INDEPENDENT_LEADS[2:], "t")
    assert measure(eight_leads_no_ii).to_json() == {}


def test_sampling_rate_does_not_change_the_answer() -> None:
    at_500 = measure(synthetic.synthetic_ecg(2, fs=500.0))
    at_1000 = measure(synthetic.synthetic_ecg(2, fs=1000.0))
    for key in ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms"):
        assert getattr(at_1000, key) == pytest.approx(getattr(at_500, key), abs=6), key


def test_triage_carries_measurements_only_for_ecgs_that_passed_the_gate() -> None:
    triager = Triager(load_model(None, "cpu"))
    good = decode_file(shared_data("vendor-xml", "ge-muse", "easyRecg_muse_ecg1.xml"))
    outcomes = triager.triage([good, synthetic.flat_line(0)])
    measured, flat = (o.to_json()["measurements"] for o in outcomes)
    assert {"heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms",
            "p_axis_deg", "qrs_axis_deg", "t_axis_deg"} == set(measured)
    assert flat == {}
