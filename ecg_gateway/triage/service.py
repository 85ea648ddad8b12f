"""Triage a batch of ECGs: quality gate → preprocess → one forward pass → decision.

Shared by the worker (daemon) and ``ecg-gateway triage FILE`` so both give the same
answer for the same ECG: every step is per-record and the network runs in eval mode, so
a record's probabilities do not depend on what else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ecg_gateway.ecg import CATEGORY_NAMES, UNINTERPRETABLE, Ecg
from ecg_gateway.errors import InvalidEcgError
from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.measure import measure
from ecg_gateway.triage.decide import decide, explain
from ecg_gateway.triage.model import StatementVocabulary, TriageModel
from ecg_gateway.triage.preprocess import preprocess
from ecg_gateway.triage.quality import QualityReport, assess

#: At most this many statements are reported per ECG (issue #26: the evidence a clinician reads).
MAX_STATEMENTS = 5


@dataclass(frozen=True, slots=True)
class TriageOutcome:
    """One ECG's result. ``category`` is a TriageCategory value or ``"uninterpretable"``."""

    category: str
    probabilities: dict[str, float] | None
    quality: QualityReport
    model_id: str
    model_sha256: str
    placeholder: bool
    statements: tuple[Statement, ...] = ()
    measurements: Measurements = field(default_factory=Measurements)
    decision: DecisionRule | None = None

    def to_json(self) -> dict[str, Any]:
        quality = {"ok": self.quality.ok, "reasons": list(self.quality.reasons),
                   "metrics": dict(self.quality.metrics)}
        return {"category": self.category,
                "probabilities": dict(self.probabilities) if self.probabilities is not None else None,
                "quality": quality,
                "model": {"id": self.model_id, "sha256": self.model_sha256,
                          "placeholder": self.placeholder},
                "statements": [s.to_json() for s in self.statements],
                "measurements": self.measurements.to_json(),
                "decision": self.decision.to_json() if self.decision is not None else None}


class Triager:
    """Holds a loaded model; :meth:`triage` is the whole per-batch pipeline."""

    def __init__(self, model: TriageModel) -> None:
        self.model = model

    def _prepare(self, ecg: Ecg) -> tuple[QualityReport, np.ndarray | None]:
        report = assess(ecg, leads=self.model.contract.leads)
        try:
            return report, preprocess(ecg, self.model.contract)
        except (InvalidEcgError, ValueError) as exc:
            # the gate reports missing leads already; anything else is named here
            if report.ok:
                field = getattr(exc, "field", None) or "signal"
                report = replace(report, ok=False, reasons=(f"unusable:{field}",))
            return report, None

    def triage(self, ecgs: list[Ecg]) -> list[TriageOutcome]:
        """Outcomes in input order. Model failures (e.g. out of memory) propagate."""
        prepared = [self._prepare(ecg) for ecg in ecgs]
        inputs = [x for _, x in prepared if x is not None]
        triage_p, statement_p = (self.model.predict_full(np.stack(inputs)) if inputs
                                  else (np.empty(0), np.empty(0)))
        probs, found = iter(triage_p), iter(statement_p)
        outcomes = []
        for ecg, (report, x) in zip(ecgs, prepared, strict=True):
            p = next(probs) if x is not None else None
            q = next(found) if x is not None else None
            statements: tuple[Statement, ...] = ()
            if report.ok and p is not None:
                decided = decide(p, self.model.thresholds)
                category = decided.value
                rule = explain(p, self.model.thresholds, decided, self.model.acute_budget)
                statements = select_statements(q, self.model.statements, category)
            else:
                category = UNINTERPRETABLE
                rule = DecisionRule("quality", "signal quality insufficient for automated triage"
                                    + (f" ({', '.join(report.reasons)})" if report.reasons else ""))
            # measured only where the gate passed the signal: a noisy ECG gets no numbers
            measured = measure(ecg) if category != UNINTERPRETABLE else Measurements()
            outcomes.append(TriageOutcome(
                category=category,
                probabilities=None if p is None else {n: float(v) for n, v in zip(CATEGORY_NAMES, p, strict=True)},
                statements=statements, decision=rule,
                quality=report, model_id=self.model.model_id, model_sha256=self.model.sha256,
                placeholder=self.model.placeholder, measurements=measured,
            ))
        return outcomes


def select_statements(probs: np.ndarray | None, vocabulary: StatementVocabulary | None,
                      category: str) -> tuple[Statement, ...]:
    """The statements at or above their fold-9 thresholds, those behind ``category`` first
    (same base category), then the more severe, then the more probable; at most
    :data:`MAX_STATEMENTS`. Empty without a statement head."""
    if vocabulary is None or probs is None or len(probs) != len(vocabulary.codes):
        return ()
    order = {name: i for i, name in enumerate(CATEGORY_NAMES)}
    hits = [j for j, t in enumerate(vocabulary.thresholds) if probs[j] >= t]
    hits.sort(key=lambda j: (vocabulary.categories[j] != category, -order[vocabulary.categories[j]],
                             -float(probs[j])))
    return tuple(Statement(vocabulary.codes[j], vocabulary.descriptions[j], float(probs[j]))
                 for j in hits[:MAX_STATEMENTS])
