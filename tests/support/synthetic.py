"""Synthetic ECGs and a test-only ECG container format (NumPy .npz) with its decoder.

The worker's decoder is injected; the real one (DICOM/HL7) lives in ecg_gateway.inbound.
``decode_npz`` is a genuine decoder of a genuine format, so worker tests exercise the
stored-bytes → Ecg path without needing DICOM files.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from ecg_gateway.ecg import INDEPENDENT_LEADS, Ecg
from ecg_gateway.errors import UndecodableError
from ecg_gateway.triage.preprocess import InputContract

NPZ = "application/x-ecg-npz"
# (centre s, width s, amplitude mV) of P, Q, R, S, T relative to the beat
_WAVES = ((-0.20, 0.025, 0.15), (-0.03, 0.010, -0.10), (0.0, 0.012, 1.0), (0.03, 0.010, -0.25),
          (0.25, 0.045, 0.30))
_LEAD_GAIN = (0.8, 1.2, -0.6, 0.4, 0.9, 1.4, 1.3, 1.0)


def synthetic_ecg(seed: int = 0, fs: float = 500.0, seconds: float = 10.0, bpm: float = 70.0) -> Ecg:
    """A clean 8-lead sinus-rhythm-like ECG (sum of Gaussian waves + 10 µV noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    rr = 60.0 / (bpm * rng.uniform(0.9, 1.1))
    beats = np.arange(rng.uniform(0.3, 0.6), seconds, rr)
    base = np.zeros_like(t)
    for beat in beats:
        for centre, width, amp in _WAVES:
            base += amp * np.exp(-0.5 * ((t - beat - centre) / width) ** 2)
    gains = np.array(_LEAD_GAIN) * rng.uniform(0.8, 1.2, size=8)
    signal = gains[:, None] * base[None, :] + rng.normal(scale=0.01, size=(8, t.size))
    return Ecg(signal.astype(np.float32), fs, INDEPENDENT_LEADS, "synthetic", uid=f"2.25.{seed}")


def flat_line(seed: int = 0) -> Ecg:
    ecg = synthetic_ecg(seed)
    return replace(ecg, signal=np.zeros_like(ecg.signal))


def lead_off(seed: int = 0, lead: str = "V2") -> Ecg:
    ecg = synthetic_ecg(seed)
    signal = ecg.signal.copy()
    i = ecg.leads.index(lead)
    signal[i, int(2 * ecg.fs):int(6 * ecg.fs)] = signal[i, int(2 * ecg.fs)]
    return replace(ecg, signal=signal)


def clipped(seed: int = 0, lead: str = "II") -> Ecg:
    ecg = synthetic_ecg(seed)
    signal = ecg.signal.copy()
    i = ecg.leads.index(lead)
    signal[i] = np.minimum(signal[i], 0.5 * signal[i].max())
    return replace(ecg, signal=signal)


def encode_npz(ecg: Ecg) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, signal=ecg.signal, fs=np.float64(ecg.fs), leads=np.array(ecg.leads))
    return buf.getvalue()


def decode_npz(content_type: str, raw: bytes) -> Ecg:
    """Decoder for ``application/x-ecg-npz``; anything else is undecodable."""
    if content_type != NPZ:
        raise UndecodableError(f"unsupported content type {content_type!r}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return Ecg(data["signal"], float(data["fs"]), tuple(str(x) for x in data["leads"]), "npz")
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise UndecodableError(f"not a valid ECG npz: {type(exc).__name__}") from None


TINY_CONTRACT = InputContract(fs=100, length=1000, leads=INDEPENDENT_LEADS)


def write_tiny_checkpoint(path: Path) -> str:
    """A small untrained net (fast to load and run) saved as a real checkpoint."""
    import torch

    from ecg_gateway.triage.model import save_checkpoint
    from ecg_gateway.triage.network import TriageNet

    torch.manual_seed(0)
    net = TriageNet(widths=(16, 32), blocks_per_group=2, fc_hidden=16).eval()
    return save_checkpoint(path, net, TINY_CONTRACT, thresholds={"acute": 0.3},
                           metadata={"model_id": "tiny-test", "placeholder": False})
