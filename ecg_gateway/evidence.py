"""What a result carries beside its category: the statements behind it, the global ECG
measurements and the rule that decided it.

Plain frozen types shared by the worker (which computes them), the ``results`` row (JSON
columns), the ORU composer, the PDF page, the admin page and ``triage --json``. Each has
``to_json``/``from_json`` so a stored row and a fresh outcome read the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Statement:
    """One SCP-ECG statement the model found (PTB-XL's vocabulary), with its probability."""

    code: str  # e.g. "AFIB"
    description: str  # e.g. "atrial fibrillation"
    probability: float

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "description": self.description,
                "probability": round(float(self.probability), 4)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Statement:
        return cls(code=str(data["code"]), description=str(data.get("description", "")),
                   probability=float(data["probability"]))


@dataclass(frozen=True, slots=True)
class Measurements:
    """Global ECG measurements; ``None`` = not measurable (absent, never invented).

    Intervals in ms, rate in beats per minute, axes in degrees (-180..180].
    """

    heart_rate_bpm: float | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_bazett_ms: float | None = None
    qtc_fridericia_ms: float | None = None
    p_axis_deg: float | None = None
    qrs_axis_deg: float | None = None
    t_axis_deg: float | None = None

    def to_json(self) -> dict[str, float]:
        """Only the measured values (a missing key means "not measurable")."""
        return {k: round(float(v), 1) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Measurements:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in (data or {}).items() if k in known and v is not None})

    def is_empty(self) -> bool:
        return not self.to_json()


@dataclass(frozen=True, slots=True)
class DecisionRule:
    """Which rule set the category, in words a clinician reads in the impression.

    ``rule``: "threshold" (a category's probability reached its operating point) or
    "argmax" (the most probable category) or "quality" (the signal gate refused it).
    """

    rule: str
    text: str
    threshold: float | None = None
    flag_budget: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DecisionRule | None:
        if not data:
            return None
        return cls(rule=str(data["rule"]), text=str(data["text"]),
                   threshold=None if data.get("threshold") is None else float(data["threshold"]),
                   flag_budget=None if data.get("flag_budget") is None else float(data["flag_budget"]))


def statements_from_json(data: list[dict[str, Any]] | None) -> tuple[Statement, ...]:
    return tuple(Statement.from_json(item) for item in (data or []))
