"""The page's header text: verdict, probabilities, rule, patient, measurements, statements."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ecg_gateway.ecg import Demographics
from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.outbound.oru import MessageView, ResultView
from ecg_gateway.outbound.page import page_text
from ecg_gateway.outbound.render import HEADER_ROWS

ACQUIRED = datetime(2025, 1, 1, 11, 58)
RULE = DecisionRule("threshold", "ACUTE: p(acute) 0.31 \u2265 0.12, the threshold that flags 10 % "
                    "of ECGs", threshold=0.12, flag_budget=0.1)
MEASURED = Measurements(heart_rate_bpm=72.4, pr_ms=160.0, qrs_ms=92.0, qt_ms=380.0,
                        qtc_bazett_ms=410.0, qtc_fridericia_ms=401.6, p_axis_deg=60.0,
                        qrs_axis_deg=-30.0, t_axis_deg=None)
STATEMENTS = tuple(Statement(code, name, p) for code, name, p in (
    ("NORM", "normal ECG", 0.05), ("AFIB", "atrial fibrillation", 0.87), ("STE", "ST elevation", 0.41),
    ("LBBB", "left bundle branch block", 0.2), ("PVC", "ventricular premature complex", 0.12),
    ("IMI", "inferior myocardial infarction", 0.3)))


def result(category: str = "acute", probs: tuple[float | None, ...] = (0.01, 0.02, 0.04, 0.93),
           ) -> ResultView:
    return ResultView(category, *probs, model_id="ecg-resnet@1.2", model_sha256="ab" * 32)


def message() -> MessageView:
    demo = Demographics(patient_id="PAT123", patient_name="DOE^JOHN^Q", birth_date="19600101", sex="M")
    return MessageView(demo, ecg_uid="1.2.3.4", received_at=datetime.now(UTC) - timedelta(seconds=30),
                       acquired_at=ACQUIRED)


def test_header_names_category_probabilities_patient_and_provenance() -> None:
    text = page_text(result(), message())
    assert "ACUTE" in text.title and "physician" in text.title
    probs, patient, acquired, model = text.details
    assert "p(acute) = 0.93" in probs and "p(normal) = 0.01" in probs
    assert "DOE, JOHN" in patient and "PAT123" in patient
    assert "2025-01-01 11:58:00" in acquired and "1.2.3.4" in acquired
    assert "ecg-resnet@1.2" in model
    assert text.findings == ()  # nothing measured, no statements: the right column stays empty


def test_unclassifiable_ecg_says_why() -> None:
    text = page_text(replace(result("uninterpretable", (None,) * 4),
                             quality={"reasons": ["lead_off:V1"]}), message())
    assert "signal quality" in text.details[0] and "lead_off:V1" in text.details[0]


def test_rule_measurements_and_statements_appear_when_present() -> None:
    text = page_text(replace(result(), decision=RULE, measurements=MEASURED,
                             statements=STATEMENTS), message())
    assert text.details[1] == f"Decision: {RULE.text}"
    assert len(text.findings) <= HEADER_ROWS  # every line is on the page
    hr, qtc, *shown = text.findings
    assert "HR 72 /min" in hr and "PR 160 ms" in hr and "QRS 92 ms" in hr and "QT 380 ms" in hr
    assert "QTc 410 ms (Bazett)" in qtc and "402 ms (Fridericia)" in qtc
    assert "QRS -30°" in qtc and "T \u2013" in qtc  # the T axis was not measurable
    assert shown[0] == "Model statements: AFIB  atrial fibrillation  0.87"
    shown[0] = shown[0].removeprefix("Model statements: ")
    assert [line.split()[0] for line in shown] == ["AFIB", "STE", "IMI", "LBBB", "PVC"]  # top 5


def test_patient_line_reads_composites_as_the_inbound_side_keeps_them() -> None:
    """PID-3 arrives whole (``id^^^authority^type``) and a name may hold an escaped ``^``: the
    page shows the id itself and the name's family and given parts as text."""
    demo = Demographics(patient_id="IOP-0001^^^HOSP^MR", patient_name="O'NEIL^ANN^M\\S\\X", sex="F")
    msg = MessageView(demo, ecg_uid="1.2.3.4", received_at=datetime.now(UTC), acquired_at=ACQUIRED)
    patient = page_text(result(), msg).details[1]
    assert "O'NEIL, ANN" in patient and "ID IOP-0001 " in patient + " " and "HOSP" not in patient
