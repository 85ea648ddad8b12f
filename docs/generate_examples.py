"""Write the examples in docs/ from the code, so the documents show what the gateway does.

    python docs/generate_examples.py          # rewrite the generated blocks in place
    python docs/generate_examples.py --check  # exit 1 when a document is out of date

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``.
The HL7 examples are produced by the real decoder, receiver, ACK builder and ORU composer
(segments shown one per line; on the wire they end with CR). Synthetic data only: the
patient is TEST^PATIENT and every identifier is made up. tests/unit/test_docs.py runs --check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ecg_gateway.config import OutboundConfig, example_yaml
from ecg_gateway.ecg import Demographics
from ecg_gateway.evidence import DecisionRule, Measurements, Statement
from ecg_gateway.inbound.hl7 import decode_hl7, parse_message
from ecg_gateway.inbound.hl7_ack import build_ack
from ecg_gateway.inbound.hl7_receiver import Hl7Receiver
from ecg_gateway.outbound.oru import MessageView, ResultView, compose_oru
from ecg_gateway.store.db import make_engine, make_session_factory
from ecg_gateway.store.ingest import Ingestor

DOCS = ROOT / "docs"
ACK_TIME = datetime(2025, 1, 1, 11, 58, 21, tzinfo=UTC)
SEND_TIME = datetime(2025, 1, 1, 11, 58, 30, tzinfo=UTC)
FAKE_SHA256 = "5e0c8f1d2a3b4c5d" + "0" * 48
FAKE_PDF = b"%PDF-1.7 placeholder: the real attachment is the rendered 12-lead tracing"
LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
# Four sample times x 8 leads, in microvolts (raw value x 5 uV): made-up numbers.
SAMPLES = [[(t * 7 + k * 3) % 11 - 5 for k in range(len(LEADS))] for t in range(4)]

BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)",
                   re.DOTALL)


def inbound_oru(*, number: str | None = None, message_type: str = "ORU^R01^ORU_R01") -> bytes:
    """A native-waveform ORU^R01 as a cart would send it: 8 leads, 500 Hz, MA layout."""
    cd = [f"OBX|{i + 2}|CD|{lead}^CHN|1|{i + 1}&{lead}^^5&uV&&UCUM^1&0^500"
          for i, lead in enumerate(LEADS)]
    rows = [[str(v) for v in row] for row in SAMPLES]
    if number is not None:
        rows[1][2] = number
    ma = "~".join("^".join(row) for row in rows)
    segments = [
        (f"MSH|^~\\&|CART|CARDIOLOGY|ECG-GATEWAY|HOSP|20250101115820||{message_type}|CART-000123"
         "|P|2.5.1||||||UNICODE UTF-8"),
        "PID|1||TEST-0001^^^HOSP^MR||TEST^PATIENT||19700101|F",
        "PV1|1|O|CARDIO^101^1^HOSP",
        "ORC|RE|PLC-0001|FIL-0001||CM",
        "OBR|1|PLC-0001|FIL-0001|11524-6^EKG study^LN|||20250101115800",
        "OBX|1|TS|TIME^TIM|1|20250101115800",
        *cd,
        f"OBX|{len(cd) + 2}|MA|ECG^WAV|1|{ma}",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _receiver_ack(payload: bytes) -> bytes:
    """What the receiver answers for a message it rejects (decode path, no database)."""
    receiver = Hl7Receiver(Ingestor(make_session_factory(make_engine("sqlite://"))))
    outcome = receiver.process(payload, peer="docs")
    assert outcome.code != "AA", "only rejections are answered without a database"
    return build_ack(outcome.code, outcome.header, text=outcome.text, error=outcome.error,
                     now=ACK_TIME, ack_control_id="ACK5F3A9C0D2E1B4A77").encode("utf-8")


def ack_aa() -> bytes:
    """The AA sent after the example message is committed (the receiver's ACK call)."""
    header = parse_message(inbound_oru()).header
    return build_ack("AA", header, now=ACK_TIME, ack_control_id="ACK5F3A9C0D2E1B4A77").encode("utf-8")


def ack_ae() -> bytes:
    return _receiver_ack(inbound_oru(number="12x"))


def ack_ar() -> bytes:
    return _receiver_ack(inbound_oru(message_type="ADT^A08^ADT_A01"))


def _view(demographics: Demographics, uid: str, acquired: datetime | None) -> MessageView:
    return MessageView(demographics=demographics, ecg_uid=uid, received_at=ACK_TIME,
                       acquired_at=acquired)


#: made-up values of the kind ecg_gateway.measure reports (the 4-sample example has no beats)
MEASURED = Measurements(heart_rate_bpm=88.0, pr_ms=164.0, qrs_ms=92.0, qt_ms=372.0,
                        qtc_bazett_ms=450.6, qtc_fridericia_ms=422.4, p_axis_deg=54.0,
                        qrs_axis_deg=-8.0, t_axis_deg=112.0)
ACUTE_CONTROL_ID = "ECGGW01JGKXR9TB0F7QK"  # the form new_control_id() makes (time + random)


def oru_acute(correction: bool = False) -> bytes:
    """The ORU^R01 for the example message, triaged acute, with measurements, a statement,
    the deciding rule and its PDF attached."""
    ecg = decode_hl7(inbound_oru())
    result = ResultView("acute", 0.0112, 0.0315, 0.0421, 0.9152, model_id="ecg-resnet@1.0",
                        model_sha256=FAKE_SHA256, measurements=MEASURED,
                        statements=(Statement("STE_", "non-specific ST elevation", 0.8731),),
                        decision=DecisionRule("threshold", "p(acute) 0.92 >= 0.12, the threshold "
                                              "that flags 10 % of ECGs", 0.12, 0.1))
    control_id = "ECGGW01JGKXRA3Q07N2D" if correction else ACUTE_CONTROL_ID
    return compose_oru(result, _view(ecg.demographics, ecg.uid or "", ecg.acquired_at),
                       control_id, OutboundConfig(), FAKE_PDF, SEND_TIME, correction=correction)


def oru_uninterpretable() -> bytes:
    """A DICOM ECG (no location known) that failed the quality gate: no PDF, no probabilities."""
    demographics = Demographics(patient_id="TEST-0002^^^HOSP", patient_name="TEST^PATIENT^B",
                                birth_date="19800202", sex="M", accession="ACC-0002")
    result = ResultView("uninterpretable", None, None, None, None, model_id="ecg-resnet@1.0",
                        model_sha256=FAKE_SHA256,
                        quality={"reasons": ["lead_off:V1,V2", "flat:V3"]})
    view = _view(demographics, "2.25.123456789012345678901234567890",
                 datetime(2025, 1, 1, 9, 30, 0))
    return compose_oru(result, view, "ECGGW01JGKXQ2M90S4VW", OutboundConfig(), None, SEND_TIME)


def _er7(raw: bytes) -> str:
    return raw.decode("utf-8").rstrip("\r").replace("\r", "\n")


GENERATORS: dict[str, Callable[[], str]] = {
    "inbound-oru": lambda: _er7(inbound_oru()),
    "ack-aa": lambda: _er7(ack_aa()),
    "ack-ae": lambda: _er7(ack_ae()),
    "ack-ar": lambda: _er7(ack_ar()),
    "oru-acute": lambda: _er7(oru_acute()),
    "oru-correction-order": lambda: "\n".join(line for line in _er7(oru_acute(correction=True)).split("\n")
                                               if line.startswith(("MSH", "ORC", "OBR"))),
    "oru-uninterpretable": lambda: _er7(oru_uninterpretable()),
    "config-example": lambda: example_yaml().rstrip("\n"),
}
LANGUAGE = {"config-example": "yaml"}


def render(name: str) -> str:
    """The block body for ``name``: a fenced code block."""
    return f"```{LANGUAGE.get(name, 'text')}\n{GENERATORS[name]()}\n```\n"


def blocks(text: str) -> dict[str, str]:
    """name -> current body of every generated block in a document."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m["name"]) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale documents, change nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "out of date" if args.check else "rewritten"
    for name in stale:
        print(f"{name}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    import logging

    import structlog

    # the receiver logs its rejections; the examples are all this script should print
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sys.exit(main())
