"""The one ECG record type every decoder produces and every consumer reads.

Decoders (DICOM, HL7 v2 waveform, aECG, GE MUSE XML, Philips SierraECG XML, SCP-ECG, WFDB)
build an :class:`Ecg`; the quality gate, the model, the renderer and training read nothing else.
"""

from __future__ import annotations

import enum
import json
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

#: Canonical 12-lead names and order.
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
#: The 8 independent leads; the other four are linear combinations of I and II.
INDEPENDENT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


class TriageCategory(str, enum.Enum):
    """The four categories of van de Leur et al. (JAHA 2020), in order of urgency."""

    NORMAL = "normal"
    ABNORMAL_NOT_ACUTE = "abnormal_not_acute"
    SUBACUTE = "subacute"
    ACUTE = "acute"


#: Model output order; index i of a probability vector is CATEGORY_ORDER[i].
CATEGORY_ORDER: tuple[TriageCategory, ...] = tuple(TriageCategory)
#: The same order as plain names (checkpoints, JSON, result columns).
CATEGORY_NAMES: tuple[str, ...] = tuple(c.value for c in CATEGORY_ORDER)
#: Result category for an ECG that fails the signal-quality gate (never "normal").
UNINTERPRETABLE = "uninterpretable"


@dataclass(frozen=True, slots=True)
class Demographics:
    """Patient and order identifiers: PHI. Stored, echoed in the ORU, never logged."""

    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    location: str | None = None
    placer_order: str | None = None
    filler_order: str | None = None
    accession: str | None = None

    def __repr__(self) -> str:  # keep PHI out of tracebacks and debug logs
        return "Demographics(<redacted>)"

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Ecg:
    """A resting ECG: ``signal`` is float32 ``[leads, samples]`` in millivolts."""

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    source: str
    uid: str | None = None
    acquired_at: datetime | None = None
    demographics: Demographics = field(default_factory=Demographics)

    def __post_init__(self) -> None:
        if self.signal.ndim != 2 or self.signal.shape[0] != len(self.leads):
            raise ValueError("signal must be [leads, samples] with one name per lead")
        if self.signal.dtype != np.float32:
            object.__setattr__(self, "signal", self.signal.astype(np.float32))

    def __repr__(self) -> str:
        return (f"Ecg(source={self.source!r}, uid={self.uid!r}, fs={self.fs}, "
                f"leads={len(self.leads)}, samples={self.n_samples})")

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        return self.signal[self.leads.index(name)]

    def with_standard_leads(self) -> Ecg:
        """Return the 12 standard leads in canonical order, deriving III/aVR/aVL/aVF.

        Carts that send only 8 leads omit the limb leads because they are linear
        combinations of I and II (Einthoven/Goldberger); we derive them here.
        """
        have = dict(zip(self.leads, self.signal, strict=True))
        if "I" in have and "II" in have:
            lead_i, lead_ii = have["I"], have["II"]
            derived = {
                "III": lead_ii - lead_i,
                "aVR": -(lead_i + lead_ii) / 2,
                "aVL": lead_i - lead_ii / 2,
                "aVF": lead_ii - lead_i / 2,
            }
            for name, values in derived.items():
                have.setdefault(name, values)
        missing = [name for name in STANDARD_LEADS if name not in have]
        if missing:
            from ecg_gateway.errors import InvalidEcgError

            raise InvalidEcgError(f"missing leads: {', '.join(missing)}", field="leads")
        signal = np.stack([have[name] for name in STANDARD_LEADS]).astype(np.float32)
        return replace(self, signal=signal, leads=STANDARD_LEADS)


def pack_tracing(ecg: Ecg) -> bytes:
    """The waveform alone (no demographics, no UID), losslessly: what the worker stores on a
    result so the sender draws the PDF without decoding the raw message again."""
    head = json.dumps({"fs": ecg.fs, "leads": list(ecg.leads), "source": ecg.source}).encode()
    body = zlib.compress(np.ascontiguousarray(ecg.signal, dtype="<f4").tobytes(), 1)
    return len(head).to_bytes(4, "big") + head + body


def unpack_tracing(data: bytes) -> Ecg:
    """Inverse of :func:`pack_tracing`."""
    size = int.from_bytes(data[:4], "big")
    head = json.loads(data[4:4 + size])
    signal = np.frombuffer(zlib.decompress(data[4 + size:]), dtype="<f4").astype(np.float32)
    leads = tuple(head["leads"])
    return Ecg(signal=signal.reshape(len(leads), -1), fs=float(head["fs"]), leads=leads,
               source=head["source"])
