"""Signal-quality gate: an ECG we cannot read is never called normal.

Runs on the decoded :class:`Ecg` at its own sampling rate, on the leads the model uses
(I, II, V1–V6 by default; limb leads are derived if asked for). Each check is a plain
measurement with a limit; a failed check adds a reason ``"code"`` or ``"code:LEAD,LEAD"``:

* ``too_short`` — under ``min_duration_s`` (the model reads 10 s);
* ``missing_lead`` / ``missing_samples`` — a lead absent, or holding NaN/inf;
* ``flat_line`` (every lead) / ``flat_lead`` — robust range under ``flat_range_mv``;
* ``lead_off`` — a lead stays quiet for ``lead_off_s`` while most other leads are active
  (a pause in every lead at once is bradycardia or a pause, not an electrode);
* ``clipping`` — ``clip_min_runs`` or more plateaus at the lead's exact maximum or minimum
  (ADC saturation flattens each beat's peak at the rail);
* ``out_of_range`` — robust range or baseline beyond ``out_of_range_mv`` (saturation,
  electrode jumps, extreme baseline wander);
* ``noise`` — the 35–45 Hz band (above most ECG energy, below mains), RMS over 0.2-s
  windows, median over windows (so QRS complexes and pacing spikes do not count),
  above ``noise_mv``: muscle and electrode noise that swamps the waveform.

Limits were set above everything seen in real recordings, except records with zeroed or
broken leads (``bench/quality_gate.py``): 99.93% of 3,000 PTB-XL records pass (the two
refused have a dead V4-V6 and a 17 mV burst), all 4 DICOM files, and the 127 CinC 2021
samples except three Chapman records whose chest leads are all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from ecg_gateway.ecg import INDEPENDENT_LEADS, Ecg
from ecg_gateway.errors import InvalidEcgError

NOISE_BAND_HZ = (35.0, 45.0)


@dataclass(frozen=True, slots=True)
class QualityLimits:
    min_duration_s: float = 8.0
    flat_range_mv: float = 0.05
    quiet_window_s: float = 0.2
    quiet_ptp_mv: float = 0.015
    lead_off_s: float = 1.0
    clip_min_runs: int = 3
    clip_run_s: float = 0.01
    out_of_range_mv: float = 15.0
    noise_mv: float = 0.15


DEFAULT_LIMITS = QualityLimits()


@dataclass(frozen=True, slots=True)
class QualityReport:
    """``ok`` is False iff ``reasons`` is non-empty; ``metrics`` are the worst-lead values."""

    ok: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "reasons": list(self.reasons), "metrics": dict(self.metrics)}


def _leads(ecg: Ecg, wanted: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The wanted leads present or derivable, and the names of those that are not."""
    have = {name: ecg.lead(name) for name in wanted if name in ecg.leads}
    if len(have) < len(wanted):
        try:
            full = ecg.with_standard_leads()
            have = {name: full.lead(name) for name in wanted}
        except InvalidEcgError:
            pass
    return have, [name for name in wanted if name not in have]


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not mask.any():
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def _runs_at(x: np.ndarray, value: float, min_len: int) -> int:
    """Number of runs of at least ``min_len`` consecutive samples equal to ``value``."""
    padded = np.concatenate(([0], (x == value).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int(((edges[1::2] - edges[::2]) >= min_len).sum())


def _windows(x: np.ndarray, width: int) -> np.ndarray:
    n = x.shape[-1] // width * width
    return x[..., :n].reshape(*x.shape[:-1], -1, width)


def _noise_mv(sig: np.ndarray, fs: float, window: int) -> np.ndarray:
    """Per lead: median over windows of the 35–45 Hz band RMS (mV)."""
    if fs < 2.1 * NOISE_BAND_HZ[1] or sig.shape[-1] < 4 * window:
        return np.zeros(sig.shape[0])
    sos = butter(4, NOISE_BAND_HZ, btype="bandpass", fs=fs, output="sos")
    band = sosfiltfilt(sos, sig, axis=-1)
    return np.median(np.sqrt((_windows(band, window) ** 2).mean(axis=-1)), axis=-1)


def _flag(reasons: list[str], code: str, leads: list[str]) -> None:
    if leads:
        reasons.append(f"{code}:{','.join(leads)}")


def assess(ecg: Ecg, leads: tuple[str, ...] = INDEPENDENT_LEADS,
           limits: QualityLimits = DEFAULT_LIMITS) -> QualityReport:
    """Measure the ECG and decide whether it can be triaged at all."""
    reasons: list[str] = []
    if not (np.isfinite(ecg.fs) and ecg.fs > 0):
        return QualityReport(False, ("bad_sampling_rate",), {"fs": float("nan")})
    metrics: dict[str, float] = {"duration_s": float(ecg.duration_s), "fs": float(ecg.fs)}
    if ecg.duration_s < limits.min_duration_s:
        reasons.append("too_short")
    present, missing = _leads(ecg, leads)
    _flag(reasons, "missing_lead", missing)
    broken = [name for name, x in present.items() if not np.all(np.isfinite(x))]
    _flag(reasons, "missing_samples", broken)
    names = [name for name in present if name not in broken]
    window = max(2, int(round(limits.quiet_window_s * ecg.fs)))
    if not names or ecg.n_samples < 2 * window:
        reasons.append("no_usable_signal")
        return QualityReport(False, tuple(reasons), metrics)
    sig = np.stack([present[name] for name in names]).astype(np.float64)

    low, mid, high = np.percentile(sig, [0.5, 50, 99.5], axis=1)
    ranges = high - low
    flat = ranges < limits.flat_range_mv
    if flat.all():
        reasons.append("flat_line")
    else:
        _flag(reasons, "flat_lead", [n for n, f in zip(names, flat, strict=True) if f])

    wins = _windows(sig, window)
    quiet = (wins.max(axis=-1) - wins.min(axis=-1)) < limits.quiet_ptp_mv  # [leads, windows]
    active_others = ((~quiet).sum(axis=0, keepdims=True) - (~quiet)) / max(1, len(names) - 1)
    off_runs = np.array([_longest_run(quiet[i] & (active_others[i] >= 0.5)) for i in range(len(names))])
    off_s = off_runs * window / ecg.fs
    _flag(reasons, "lead_off", [n for n, s, f in zip(names, off_s, flat, strict=True)
                                if s >= limits.lead_off_s and not f])

    min_run = max(2, int(round(limits.clip_run_s * ecg.fs)))
    clip_runs = np.array([max(_runs_at(x, x.max(), min_run), _runs_at(x, x.min(), min_run)) for x in sig])
    _flag(reasons, "clipping", [n for n, c in zip(names, clip_runs, strict=True) if c >= limits.clip_min_runs])

    out = (ranges > limits.out_of_range_mv) | (np.abs(mid) > limits.out_of_range_mv)
    _flag(reasons, "out_of_range", [n for n, o in zip(names, out, strict=True) if o])

    noise = _noise_mv(sig, ecg.fs, window)
    _flag(reasons, "noise", [n for n, v in zip(names, noise, strict=True) if v > limits.noise_mv])

    metrics.update(min_range_mv=float(ranges.min()), max_range_mv=float(ranges.max()),
                   max_lead_off_s=float(off_s.max()), max_clip_runs=float(clip_runs.max()),
                   max_noise_mv=float(noise.max()), flat_leads=float(flat.sum()))
    return QualityReport(not reasons, tuple(reasons), metrics)
