"""Ventricular rate from the signal, for the rate-dependent label rules.

PTB-XL has no heart-rate column, yet AF with a rapid ventricular response or an extreme
bradycardia changes the triage category. A simple multi-lead QRS detector is enough here:
the rules only need to know whether the rate is beyond 40 / 110 / 150 bpm, and its output is
checked against the SBRAD/STACH statements in tests/unit/test_labels.py.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt

#: Shortest RR interval searched for (250 bpm: covers SVT and 1:1 conduction).
MIN_RR_S = 0.24


def qrs_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of QRS complexes in a ``[leads, samples]`` signal in mV.

    Band-pass 5-15 Hz (the QRS band; suppresses P/T waves and baseline wander), sum the
    absolute slopes over all leads (robust to one bad lead), smooth over ~80 ms and pick
    peaks above a third of the typical beat energy with a 240 ms refractory period.
    """
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64))
    if x.ndim != 2 or x.shape[1] < fs * 2:
        return np.zeros(0, dtype=np.int64)
    high = min(15.0, 0.45 * fs)
    sos = butter(2, [5.0, high], btype="bandpass", fs=fs, output="sos")
    filtered = sosfiltfilt(sos, x, axis=1)
    energy = np.abs(np.diff(filtered, axis=1)).sum(axis=0)
    win = max(1, int(round(0.08 * fs)))
    energy = np.convolve(energy, np.ones(win) / win, mode="same")
    if not np.any(energy > 0):
        return np.zeros(0, dtype=np.int64)
    candidates, _ = find_peaks(energy, distance=max(1, int(MIN_RR_S * fs)))
    if candidates.size == 0:
        return candidates
    typical = np.percentile(energy[candidates], 90)
    peaks, _ = find_peaks(energy, height=typical / 3.0, distance=max(1, int(MIN_RR_S * fs)))
    return peaks


def heart_rate_bpm(signal: np.ndarray, fs: float) -> float:
    """Mean ventricular rate in beats/min over the detected beats; NaN when < 3 beats.

    The mean over the whole strip (not the median RR) is the clinical "ventricular
    rate" in irregular rhythms such as atrial fibrillation.
    """
    peaks = qrs_peaks(signal, fs)
    if peaks.size < 3:
        return float("nan")
    span_s = (peaks[-1] - peaks[0]) / fs
    return float(60.0 * (peaks.size - 1) / span_s) if span_s > 0 else float("nan")
