"""Ecg -> model input: lead order, derived leads, resampling, crop/pad, units, scale."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import INDEPENDENT_LEADS, STANDARD_LEADS, Ecg
from ecg_gateway.errors import InvalidEcgError
from ecg_gateway.triage.preprocess import InputContract, fit_length, preprocess, preprocess_batch
from tests.support.paths import shared_data

PTBXL = InputContract(fs=100, length=1000, leads=INDEPENDENT_LEADS)


def _ecg(signal: np.ndarray, fs: float, leads: tuple[str, ...]) -> Ecg:
    return Ecg(signal=signal.astype(np.float32), fs=fs, leads=leads, source="test")


def _ramp_leads(leads: tuple[str, ...], n: int) -> np.ndarray:
    """Lead i is the constant i+1, so the order is visible in the output."""
    return np.stack([np.full(n, i + 1.0) for i in range(len(leads))])


def test_contract_round_trip_and_validation() -> None:
    contract = InputContract(fs=500, length=5000, leads=("I", "II", "V1"), units="uV", scale=0.5)
    assert InputContract.from_dict(contract.to_dict()) == contract
    assert contract.to_dict()["leads"] == ["I", "II", "V1"]
    for bad in (dict(fs=0, length=10, leads=("I",)), dict(fs=100, length=0, leads=("I",)),
                dict(fs=100, length=10, leads=("X",)), dict(fs=100, length=10, leads=("I", "I")),
                dict(fs=100, length=10, leads=("I",), units="mmHg"),
                dict(fs=100, length=10, leads=("I",), scale=0.0)):
        with pytest.raises(ValueError):
            InputContract(**bad)
    with pytest.raises(ValueError, match="unknown"):
        InputContract.from_dict({"fs": 100, "length": 10, "leads": ["I"], "gain": 2})


def test_lead_selection_follows_the_contract_order() -> None:
    reordered = tuple(reversed(STANDARD_LEADS))
    ecg = _ecg(_ramp_leads(reordered, 1000), 100, reordered)
    out = preprocess(ecg, PTBXL)
    assert out.dtype == np.float32 and out.shape == (8, 1000)
    expected = [reordered.index(lead) + 1.0 for lead in INDEPENDENT_LEADS]
    assert out[:, 500].tolist() == expected


def test_limb_leads_are_derived_from_i_and_ii() -> None:
    rng = np.random.default_rng(0)
    sig = rng.normal(size=(8, 1000))
    ecg = _ecg(sig, 100, INDEPENDENT_LEADS)
    out = preprocess(ecg, InputContract(fs=100, length=1000, leads=("III", "aVR", "aVL", "aVF")))
    lead_i, lead_ii = ecg.signal[0], ecg.signal[1]
    np.testing.assert_allclose(out, np.stack([lead_ii - lead_i, -(lead_i + lead_ii) / 2,
                                              lead_i - lead_ii / 2, lead_ii - lead_i / 2]), atol=1e-6)


def test_missing_lead_is_a_precise_error() -> None:
    leads = tuple(lead for lead in INDEPENDENT_LEADS if lead != "V3")
    with pytest.raises(InvalidEcgError, match="V3"):
        preprocess(_ecg(np.zeros((7, 1000)), 100, leads), PTBXL)


@pytest.mark.parametrize("fs_in", [500.0, 1000.0, 240.0, 250.0])
def test_resampling_keeps_the_waveform(fs_in: float) -> None:
    t_in = np.arange(int(10 * fs_in)) / fs_in
    sig = np.stack([np.sin(2 * np.pi * 3.0 * t_in + k) for k in range(8)])
    out = preprocess(_ecg(sig, fs_in, INDEPENDENT_LEADS), PTBXL)
    t_out = np.arange(1000) / 100.0
    want = np.stack([np.sin(2 * np.pi * 3.0 * t_out + k) for k in range(8)])
    assert out.shape == (8, 1000)
    np.testing.assert_allclose(out[:, 50:-50], want[:, 50:-50], atol=0.01)  # edges: filter transients


def test_resampling_removes_what_the_target_rate_cannot_hold() -> None:
    fs_in = 500.0
    t = np.arange(5000) / fs_in
    sig = np.tile(np.sin(2 * np.pi * 80.0 * t), (8, 1))  # 80 Hz > 50 Hz Nyquist at 100 Hz
    out = preprocess(_ecg(sig, fs_in, INDEPENDENT_LEADS), PTBXL)
    assert np.abs(out[:, 50:-50]).max() < 0.05  # anti-aliased, not folded to 20 Hz


def test_crop_and_pad_are_centred() -> None:
    x = np.arange(12.0)[None, :]
    assert fit_length(x, 8).tolist() == [[2, 3, 4, 5, 6, 7, 8, 9]]
    assert fit_length(x, 15).tolist() == [[0, *range(12), 0, 0]]
    long = _ecg(np.tile(np.arange(1200.0), (8, 1)), 100, INDEPENDENT_LEADS)
    assert preprocess(long, PTBXL)[0, [0, -1]].tolist() == [100.0, 1099.0]
    short = _ecg(np.ones((8, 900)), 100, INDEPENDENT_LEADS)
    out = preprocess(short, PTBXL)
    assert out[:, :50].sum() == 0 and out[:, -50:].sum() == 0 and out[:, 50:950].min() == 1.0


def test_units_scale_and_nan() -> None:
    sig = np.full((8, 1000), 0.5)
    sig[3, 10] = np.nan
    ecg = _ecg(sig, 100, INDEPENDENT_LEADS)
    micro = preprocess(ecg, InputContract(fs=100, length=1000, leads=INDEPENDENT_LEADS, units="uV", scale=0.1))
    assert micro[0, 0] == pytest.approx(50.0)
    assert micro[3, 10] == 0.0 and np.isfinite(micro).all()


def test_batch_shape() -> None:
    ecgs = [_ecg(np.zeros((8, 1000)), 100, INDEPENDENT_LEADS)] * 3
    assert preprocess_batch(ecgs, PTBXL).shape == (3, 8, 1000)
    assert preprocess_batch([], PTBXL).shape == (0, 8, 1000)


def test_real_ptbxl_record_passes_through_unchanged() -> None:
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(shared_data("ptbxl", "records100", "00000", "00001_lr.hea").with_suffix("")))
    ecg = _ecg(rec.p_signal.T, rec.fs, tuple(rec.sig_name))
    out = preprocess(ecg, PTBXL)
    np.testing.assert_allclose(out, rec.p_signal.T, atol=1e-6)  # 100 Hz, 10 s, mV: identity
