"""The renderer's vectorised parts against their plain definitions (issue #28): the path text
against ``%d`` formatting, the per-lead medians against numpy's, the ragged thinning against
the rule written sample by sample and against the tolerance it promises."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_gateway.ecg import Ecg
from ecg_gateway.outbound.render import _display_rate, _medians, keep_mask, keep_masks, path_text


def test_path_text_is_what_percent_d_writes() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 9_999, 5_000)
    y = rng.integers(-9_999, 9_999, 5_000)
    y[:4] = [0, -1, 9_999, -9_999]
    moves = rng.random(5_000) < 0.1
    text, ends = path_text(x, y, moves)
    lines = [b"%d %d %s\n" % (a, b, b"m" if m else b"l") for a, b, m in zip(x, y, moves, strict=True)]
    assert text == b"".join(lines)
    assert ends.tolist() == np.cumsum([len(line) for line in lines]).tolist()


def test_path_text_refuses_what_its_table_cannot_write() -> None:
    with pytest.raises(ValueError, match="out of range"):
        path_text(np.array([10_000]), np.array([0]), np.array([False]))
    with pytest.raises(ValueError, match="out of range"):
        path_text(np.array([0]), np.array([-10_000]), np.array([False]))
    text, ends = path_text(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    assert (text, ends.tolist()) == (b"", [])


@pytest.mark.parametrize("n", [1, 2, 7, 5000])
def test_medians_match_numpy_with_gaps_and_empty_leads(n: int) -> None:
    signal = np.random.default_rng(n).normal(0.2, 1.0, (4, n)).astype(np.float32)
    signal[1, : n // 2] = np.nan  # a gap (the whole lead when n is 1)
    signal[2] = np.nan  # no samples at all
    expected = np.zeros(4, dtype=np.float32)
    measured = np.isfinite(signal).any(axis=1)
    expected[measured] = np.nanmedian(signal[measured], axis=1)
    assert np.allclose(_medians(signal), expected, atol=1e-6)


def thinned_by_definition(lead: np.ndarray, tol: float) -> np.ndarray:
    """The dyadic rule sample by sample: a block fits when its chord is within ``tol`` of its
    samples and (above 2 samples) both halves fit; fitting blocks' inner samples are dropped."""
    keep = np.ones(len(lead), dtype=bool)
    fits: dict[tuple[int, int], bool] = {}
    step = 2
    while step < len(lead):
        for start in range(0, len(lead) - step, step):
            span = lead[start:start + step + 1]
            chord = span[0] + (span[-1] - span[0]) * np.arange(step + 1) / step
            ok = bool(np.all(np.abs(span - chord) <= tol))  # NaN compares False
            if step > 2:
                ok = ok and fits[(start, step // 2)] and fits[(start + step // 2, step // 2)]
            fits[(start, step)] = ok
            if ok:
                keep[start + 1:start + step] = False
        step *= 2
    return keep


def test_ragged_thinning_follows_the_rule_and_holds_the_tolerance() -> None:
    rng = np.random.default_rng(11)
    leads = [np.cumsum(rng.normal(0, 0.05, n)) for n in (1250, 1250, 5000, 3, 2, 1, 777)]
    leads[2][1000:1100] = np.nan
    leads[6][:] = 0.0  # flat: only the dyadic blocks' ends stay
    together = keep_masks(leads, 0.09)
    for lead, mask in zip(leads, together, strict=True):
        assert mask.tolist() == thinned_by_definition(lead, 0.09).tolist()
        assert mask[0] and mask[-1]
        kept = np.flatnonzero(mask & np.isfinite(lead))
        drawn = np.interp(np.arange(len(lead)), kept, lead[kept])
        assert np.all(np.abs(lead - drawn)[np.isfinite(lead)] <= 0.09 + 1e-9)
    assert together[6].sum() <= 12
    assert keep_mask(np.stack(leads[:2]), 0.09).tolist() == [m.tolist() for m in together[:2]]
    assert together[2][999:1101].all()  # a gap and its neighbours are drawn as they are


@pytest.mark.parametrize(("fs", "spike_at"), [(1000.0, 3001), (1000.0, 3000), (2000.0, 6003), (1500.0, 4502)])
def test_thinning_to_500_hz_keeps_one_sample_spikes_and_peaks(fs: float, spike_at: int) -> None:
    n = int(10 * fs)
    t = np.arange(n) / fs
    signal = np.stack([0.3 * np.sin(2 * np.pi * 1.2 * t), np.full(n, np.nan), np.zeros(n)]).astype(np.float32)
    signal[0, spike_at] = 5.0  # a pacemaker spike, one sample wide
    signal[0, spike_at + 1000] = -3.0  # a negative deflection
    signal[2, 100:300] = np.nan  # a gap in a flat lead
    shown = _display_rate(Ecg(signal=signal, fs=fs, leads=("II", "V1", "V2"), source="test"))
    assert shown.fs == fs / int(fs // 500)
    assert shown.signal.shape == (3, int(10 * shown.fs))
    assert shown.signal[0].max() == pytest.approx(5.0) and shown.signal[0].min() == pytest.approx(-3.0)
    assert np.isnan(shown.signal[1]).all()
    k = int(fs // 500)
    gap = np.isnan(shown.signal[2])
    assert gap[100 // k + 1: 300 // k - 1].all() and gap.sum() <= 200 // k + 1  # NaN only where a block is all NaN
