"""``Ecg`` → model input, exactly as the checkpoint's contract says.

The contract (sampling rate, length, lead order, units, scale) is saved in every
checkpoint, so training and the daemon cannot drift apart: both call :func:`preprocess`.
The paper applies no filtering, only gain, resampling and lead selection; we do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from ecg_gateway.ecg import STANDARD_LEADS, Ecg
from ecg_gateway.errors import InvalidEcgError

#: Multiplier from millivolts (the unit of ``Ecg.signal``) to each supported unit.
UNITS_PER_MV: dict[str, float] = {"mV": 1.0, "uV": 1000.0, "V": 0.001}
#: Largest denominator used to approximate a resampling ratio (e.g. 240 → 100 Hz = 5/12).
MAX_RATIO_DENOMINATOR = 1000


@dataclass(frozen=True, slots=True)
class InputContract:
    """What a model expects: ``length`` samples at ``fs`` Hz of ``leads`` in ``units`` × ``scale``."""

    fs: float
    length: int
    leads: tuple[str, ...]
    units: str = "mV"
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "leads", tuple(self.leads))
        problems = []
        if not (np.isfinite(self.fs) and self.fs > 0):
            problems.append(f"fs must be a positive number, got {self.fs!r}")
        if int(self.length) != self.length or self.length < 1:
            problems.append(f"length must be a positive integer, got {self.length!r}")
        unknown = [lead for lead in self.leads if lead not in STANDARD_LEADS]
        if not self.leads or unknown or len(set(self.leads)) != len(self.leads):
            problems.append(f"leads must be distinct standard leads, got {list(self.leads)}")
        if self.units not in UNITS_PER_MV:
            problems.append(f"units must be one of {sorted(UNITS_PER_MV)}, got {self.units!r}")
        if not (np.isfinite(self.scale) and self.scale != 0):
            problems.append(f"scale must be finite and non-zero, got {self.scale!r}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "length", int(self.length))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it survives ``torch.load(weights_only=True)``."""
        return {"fs": float(self.fs), "length": self.length, "leads": list(self.leads),
                "units": self.units, "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputContract:
        """Inverse of :meth:`to_dict`; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"contract must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"fs", "length", "leads", "units", "scale"}
        missing = {"fs", "length", "leads"} - set(data)
        if unknown or missing:
            raise ValueError(f"contract keys: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(fs=float(data["fs"]), length=data["length"], leads=tuple(data["leads"]),
                   units=str(data.get("units", "mV")), scale=float(data.get("scale", 1.0)))


def select_leads(ecg: Ecg, leads: tuple[str, ...]) -> np.ndarray:
    """``[len(leads), n]`` in the given order; limb leads are derived from I and II if absent.

    Raises InvalidEcgError naming the leads that are neither present nor derivable.
    """
    if not all(lead in ecg.leads for lead in leads):
        ecg = ecg.with_standard_leads()
    return np.stack([ecg.lead(lead) for lead in leads])


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased; exact for rational ratios)."""
    if fs_in == fs_out:
        return signal
    ratio = Fraction(fs_out / fs_in).limit_denominator(MAX_RATIO_DENOMINATOR)
    if ratio.numerator == 0:
        raise InvalidEcgError(f"cannot resample {fs_in} Hz to {fs_out} Hz", field="fs")
    return resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop, or zero-pad equally on both sides, to ``length`` samples."""
    n = signal.shape[-1]
    if n >= length:
        start = (n - length) // 2
        return signal[..., start:start + length]
    before = (length - n) // 2
    return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(before, length - n - before)])


def preprocess(ecg: Ecg, contract: InputContract) -> np.ndarray:
    """One ECG → float32 ``[len(contract.leads), contract.length]`` model input.

    Order: lead selection → resampling → crop/pad → units × scale. Missing samples (NaN)
    become 0 so they cannot poison a batch; the quality gate has flagged them already.
    """
    if not (np.isfinite(ecg.fs) and ecg.fs > 0):
        raise InvalidEcgError(f"sampling rate must be positive, got {ecg.fs!r}", field="fs")
    x = select_leads(ecg, contract.leads).astype(np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    x = resample(x, ecg.fs, contract.fs)
    x = fit_length(x, contract.length)
    x = x * (UNITS_PER_MV[contract.units] * contract.scale)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_batch(ecgs: list[Ecg], contract: InputContract) -> np.ndarray:
    """``[N, leads, length]`` float32; raises on the first ECG that cannot be prepared."""
    if not ecgs:
        return np.zeros((0, len(contract.leads), contract.length), dtype=np.float32)
    return np.stack([preprocess(ecg, contract) for ecg in ecgs])
