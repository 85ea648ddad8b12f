"""Global 12-lead ECG measurements: rate, PR, QRS, QT, QTc (Bazett, Fridericia), P/QRS/T axes.

Measured the way carts measure them (IEC 60601-2-25 "global" intervals): one representative
(median) beat per lead, then one onset/offset for all leads together, from the spatial
velocity and the vector magnitude of the 12 median beats, so the earliest onset and the
latest offset in any lead count. numpy/scipy only, ~10 ms per ECG (bench/measurements.py);
docs/decisions.md says why no delineation library is used here. A value that cannot be
measured (no P wave in atrial fibrillation, too few beats, a T wave that never returns to
baseline) is ``None``, never a guess.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, find_peaks, resample_poly, sosfiltfilt

from ecg_gateway.ecg import Ecg
from ecg_gateway.errors import InvalidEcgError
from ecg_gateway.evidence import Measurements

FS = 500.0  # analysis rate: 2 ms resolution; faster recordings are decimated
MIN_BEATS = 3
PRE_S, POST_S = 0.6, 0.7  # median-beat window around each R peak
QRS_THRESHOLD = 0.04  # QRS bounds: spatial velocity above 4 % of its peak (floor removed)
P_MIN_MV = 0.03  # a P wave must rise this much above its foot in the vector magnitude
T_MIN_MV = 0.05
_I, _AVF = 0, 5  # lead indices in STANDARD_LEADS order


def measure(ecg: Ecg) -> Measurements:
    """Global measurements of one ECG; every field it cannot measure is ``None``."""
    try:
        return _measure(ecg)
    except (InvalidEcgError, ValueError, IndexError):  # missing leads, too short for the filters
        return Measurements()


def _measure(ecg: Ecg) -> Measurements:
    signal, fs = _prepare(ecg)
    r_peaks = detect_r_peaks(signal, fs)
    if len(r_peaks) < MIN_BEATS:
        return Measurements()
    rr_s = float(np.mean(np.diff(r_peaks))) / fs
    rate = 60.0 / rr_s
    beat, r_at = median_beat(signal, fs, r_peaks)
    if beat is None:
        return Measurements(heart_rate_bpm=rate)
    velocity = _smooth(np.sqrt(np.sum(np.diff(beat, axis=1) ** 2, axis=0)), fs, 0.008)
    qrs_on, qrs_off = _qrs_bounds(velocity, fs, r_at)
    if qrs_on is None or qrs_off is None:
        return Measurements(heart_rate_bpm=rate)
    # the PQ junction is the isoelectric reference of every lead
    beat = beat - beat[:, max(qrs_on - int(0.01 * fs), 0):qrs_on + 1].mean(axis=1, keepdims=True)
    magnitude = _smooth(np.sqrt(np.sum(beat**2, axis=0)), fs, 0.02)
    p_on = _p_onset(magnitude, fs, qrs_on, rr_s)
    t_end = _t_end(magnitude, fs, qrs_off, rr_s)
    return _measurements(beat, fs, (p_on, qrs_on, qrs_off, t_end), rate, rr_s)


def _prepare(ecg: Ecg) -> tuple[np.ndarray, float]:
    """The 12 standard leads at <= 500 Hz, band-passed 0.5-100 Hz (baseline wander, noise)."""
    x = ecg.with_standard_leads().signal.astype(np.float64)
    fs = float(ecg.fs)
    if fs > FS * 1.01:
        ratio = round(fs / FS)
        if abs(fs / ratio - FS) < 1:
            x, fs = resample_poly(x, 1, ratio, axis=1), fs / ratio
    if x.shape[1] < 3 * fs or not np.isfinite(x).all():
        raise ValueError("too short or not finite")
    sos = butter(2, [0.5, min(100.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=1), fs


def detect_r_peaks(x: np.ndarray, fs: float) -> np.ndarray:
    """QRS complexes (Pan-Tompkins style): the slope energy of all leads, integrated over
    100 ms; peaks at least 250 ms apart above a third of the typical beat."""
    energy = np.sum(np.diff(x, axis=1) ** 2, axis=0)
    envelope = uniform_filter1d(energy, max(1, int(0.1 * fs)), mode="nearest")
    peaks, _ = find_peaks(envelope, distance=int(0.25 * fs))
    if len(peaks) == 0:
        return peaks
    keep = peaks[envelope[peaks] > 0.3 * np.percentile(envelope[peaks], 90)]
    # the R peak proper: the largest spatial amplitude within +-60 ms of the envelope peak
    magnitude = np.sum(x**2, axis=0)
    half = int(0.06 * fs)
    refined = [p - half + int(np.argmax(magnitude[p - half:p + half])) for p in keep
               if p - half >= 0]
    return np.unique(np.asarray(refined, dtype=int))


def median_beat(x: np.ndarray, fs: float, r_peaks: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The sample-wise median of the beats (12 x window), robust to ectopic beats and noise."""
    pre, post = int(PRE_S * fs), int(POST_S * fs)
    starts = [r - pre for r in r_peaks if r - pre >= 0 and r + post <= x.shape[1]]
    if len(starts) < MIN_BEATS:
        return None, pre
    beats = np.stack([x[:, s:s + pre + post] for s in starts])
    return np.median(beats, axis=0), pre


def _smooth(v: np.ndarray, fs: float, seconds: float) -> np.ndarray:
    return uniform_filter1d(v, max(1, int(seconds * fs)), mode="nearest")


def _qrs_bounds(velocity: np.ndarray, fs: float, r_at: int) -> tuple[int | None, int | None]:
    """Onset/offset where the spatial velocity falls below a fraction of its QRS peak and
    stays there (the isoelectric PR and ST segments are slow, the QRS is fast)."""
    lo, hi = max(r_at - int(0.12 * fs), 1), min(r_at + int(0.12 * fs), len(velocity) - 1)
    peak = lo + int(np.argmax(velocity[lo:hi]))
    floor = float(np.percentile(velocity, 10))
    threshold = floor + QRS_THRESHOLD * (float(velocity[peak]) - floor)
    hold = max(1, int(0.01 * fs))
    onset = offset = None
    for i in range(peak, max(peak - int(0.15 * fs), hold), -1):
        if np.all(velocity[i - hold:i] < threshold):
            onset = i
            break
    for i in range(peak, min(peak + int(0.2 * fs), len(velocity) - hold)):
        if np.all(velocity[i:i + hold] < threshold):
            offset = i
            break
    return onset, offset


def _p_onset(magnitude: np.ndarray, fs: float, qrs_on: int, rr_s: float) -> int | None:
    """The P wave: a hump of the vector magnitude before the QRS; its onset by the tangent
    at the steepest rise, down to the baseline before it. None when there is no P wave."""
    start = max(qrs_on - int(min(0.45, 0.7 * rr_s) * fs), 0)
    stop = qrs_on - int(0.03 * fs)
    if stop - start < int(0.1 * fs):
        return None
    peak = start + int(np.argmax(magnitude[start:stop]))
    if peak - start < int(0.02 * fs):
        return None
    low = start + int(np.argmin(magnitude[start:peak]))
    if magnitude[peak] - magnitude[low] < P_MIN_MV:
        return None
    return _foot(magnitude, low, peak, rising=True)


def _t_end(magnitude: np.ndarray, fs: float, qrs_off: int, rr_s: float) -> int | None:
    """T end: the tangent at the steepest fall after the T peak meets the baseline."""
    start = qrs_off + int(0.08 * fs)
    stop = min(qrs_off + int(min(0.6, 0.85 * rr_s) * fs), len(magnitude) - 1)
    if stop - start < int(0.1 * fs):
        return None
    peak = start + int(np.argmax(magnitude[start:stop]))
    if stop - peak < int(0.02 * fs):
        return None
    low = peak + int(np.argmin(magnitude[peak:stop + 1]))
    if magnitude[peak] - magnitude[low] < T_MIN_MV:
        return None
    return _foot(magnitude, peak, low, rising=False)


def _foot(magnitude: np.ndarray, lo: int, hi: int, *, rising: bool) -> int | None:
    """Where the tangent at the steepest slope between the wave's foot (lowest point) and
    its peak meets the level of that foot."""
    slope = np.gradient(magnitude[lo:hi + 1])
    steepest = lo + int(np.argmax(slope) if rising else np.argmin(slope))
    s = float(slope[steepest - lo])
    foot_level = float(magnitude[lo if rising else hi])
    if s == 0.0 or not math.isfinite(s):
        return None
    at = steepest + (foot_level - float(magnitude[steepest])) / s
    return int(round(min(max(at, lo), hi)))


def _axis(beat: np.ndarray, lo: int | None, hi: int | None) -> float | None:
    """Frontal axis of the mean vector over [lo, hi): areas in lead I and aVF."""
    if lo is None or hi is None or hi <= lo:
        return None
    area_i, area_avf = float(beat[_I, lo:hi].sum()), float(beat[_AVF, lo:hi].sum())
    if abs(area_i) + abs(area_avf) < 1e-9:
        return None
    return math.degrees(math.atan2(area_avf, area_i))


def _measurements(ref: np.ndarray, fs: float, marks: tuple[int | None, int, int, int | None],
                  rate: float, rr_s: float) -> Measurements:
    """Intervals from the fiducial marks (P onset, QRS onset, QRS offset, T end) of ``ref``."""
    ms = 1000.0 / fs
    p_on, qrs_on, qrs_off, t_end = marks
    qt = (t_end - qrs_on) * ms if t_end is not None else None
    return Measurements(
        heart_rate_bpm=rate,
        pr_ms=(qrs_on - p_on) * ms if p_on is not None else None,
        qrs_ms=(qrs_off - qrs_on) * ms,
        qt_ms=qt,
        qtc_bazett_ms=qt / math.sqrt(rr_s) if qt is not None else None,
        qtc_fridericia_ms=qt / rr_s ** (1 / 3) if qt is not None else None,
        p_axis_deg=_axis(ref, p_on, qrs_on - int(0.02 * fs)) if p_on is not None else None,
        qrs_axis_deg=_axis(ref, qrs_on, qrs_off),
        t_axis_deg=_axis(ref, qrs_off, t_end),
    )
