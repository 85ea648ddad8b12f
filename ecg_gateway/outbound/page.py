"""What the 12-lead page says above its grid: verdict, probabilities, the deciding rule,
patient, acquisition and model on the left; measurements and the model's statements on the
right. Pure: :mod:`ecg_gateway.outbound.render` only lays these lines out.

The page is a clinical document filed with the patient, so it names the patient as a paper
ECG does; it is never logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecg_gateway import composite
from ecg_gateway.ecg import TriageCategory
from ecg_gateway.evidence import Measurements
from ecg_gateway.outbound.oru import CATEGORIES, MessageView, ResultView, quality_reasons

MAX_STATEMENTS = 5
NOT_MEASURED = "\u2013"  # en dash: a measurement the algorithm could not make


@dataclass(frozen=True, slots=True)
class PageText:
    """The header's lines: ``title`` in bold, ``details`` in the left column, ``findings``
    (measurements, then statements) in the right one; empty tuples print nothing."""

    title: str
    details: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()


def page_text(result: ResultView, message: MessageView) -> PageText:
    display = CATEGORIES[result.category][0] if result.category in CATEGORIES else result.category
    title = f"AI ECG triage: {display.upper()} - preliminary automated result, a physician must confirm"
    details = [_probabilities(result)]
    if result.decision is not None and result.decision.text:
        details.append(f"Decision: {result.decision.text}")
    details += [_patient(message), _acquisition(message),
                f"Model {result.model_id} (sha256 {result.model_sha256[:12]})"]
    return PageText(title, tuple(details), measurement_lines(result.measurements)
                    + _statements(result))


def _probabilities(result: ResultView) -> str:
    probs = [(CATEGORIES[c.value][0].lower(), result.probability(c.value)) for c in TriageCategory]
    shown = "   ".join(f"p({name}) = {p:.2f}" for name, p in probs if p is not None)
    if shown:
        return shown
    reasons = quality_reasons(result)
    return ("Not classified: signal quality insufficient for automated triage"
            + (f" ({reasons})" if reasons else ""))


def _patient(message: MessageView) -> str:
    demo = message.demographics
    parts = composite.split(demo.patient_name) if demo.patient_name else []
    name = ", ".join("&".join(part) for part in parts[:2] if any(part))
    patient_id = composite.first(demo.patient_id)
    patient = "   ".join(part for part in (
        name, f"ID {patient_id}" if patient_id else "",
        f"born {demo.birth_date}" if demo.birth_date else "", demo.sex or "") if part)
    return f"Patient: {patient}" if patient else "Patient: unknown"


def _acquisition(message: MessageView) -> str:
    acquired = message.acquired_at or message.received_at
    return f"Acquired {acquired:%Y-%m-%d %H:%M:%S}   ECG UID {message.ecg_uid or '-'}"


def measurement_lines(m: Measurements) -> tuple[str, ...]:
    """Two lines of global measurements, or none when nothing was measured (a page of dashes
    would read as "measured and abnormal")."""
    if m.is_empty():
        return ()

    def v(value: float | None, unit: str) -> str:
        return NOT_MEASURED if value is None else f"{value:.0f}{unit}"

    return (f"HR {v(m.heart_rate_bpm, ' /min')}   PR {v(m.pr_ms, ' ms')}   QRS {v(m.qrs_ms, ' ms')}"
            f"   QT {v(m.qt_ms, ' ms')}",
            f"QTc {v(m.qtc_bazett_ms, ' ms')} (Bazett)   {v(m.qtc_fridericia_ms, ' ms')} (Fridericia)"
            f"   Axes P {v(m.p_axis_deg, '°')}  QRS {v(m.qrs_axis_deg, '°')}  T {v(m.t_axis_deg, '°')}")


def _statements(result: ResultView) -> tuple[str, ...]:
    if not result.statements:
        return ()
    ranked = sorted(result.statements, key=lambda s: -s.probability)[:MAX_STATEMENTS]
    lines = [f"{s.code}  {s.description}  {s.probability:.2f}" for s in ranked]
    # the heading shares the first statement's line: two measurement lines and five statements
    # fill the column's seven rows (a heading line of its own pushed the fifth off the page)
    return (f"Model statements: {lines[0]}", *lines[1:])
