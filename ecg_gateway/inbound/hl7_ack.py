"""HL7 v2 acknowledgements (original mode AA/AE/AR, enhanced mode CA/CE/CR).

Built by string formatting, not hl7apy: hl7apy takes ~4 ms to build one ACK here, which is
most of the budget of a 3 KB message; tests/integration/test_hl7_receiver.py proves the output equal
to hl7apy's (and valid under its STRICT validation) for every code, version and mode.
The ACK echoes the sender's delimiters, MSH-11, MSH-12 (when supported) and MSH-18, swaps
MSH-3/4 with MSH-5/6 and puts MSH-10 in MSA-2. Texts are fixed strings: never PHI.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from ecg_gateway.inbound.hl7_tokens import Encoding, ErrLocation, MessageHeader

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1",
                      "2.8.2")
DEFAULT_VERSION = "2.5.1"

#: HL7 table 0357, message error condition codes (v2.5).
TABLE_0357 = {
    0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing",
    102: "Data type error", 103: "Table value not found", 200: "Unsupported message type",
    201: "Unsupported event code", 202: "Unsupported processing id", 203: "Unsupported version id",
    204: "Unknown key identifier", 205: "Duplicate key identifier", 206: "Application record locked",
    207: "Application internal error",
}
#: Original-mode code -> enhanced-mode (accept acknowledgement) code.
ACCEPT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}


@dataclass(frozen=True, slots=True)
class AckError:
    """What went wrong, for the ERR segment: table 0357 code, location, fixed text."""

    code: int
    location: ErrLocation | None
    text: str
    severity: str = "E"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _escape(text: str, enc: Encoding) -> str:
    out = text.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, code in ((enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"),
                       (enc.repetition, "R"), (enc.truncation, "P")):
        if char:
            out = out.replace(char, f"{enc.escape}{code}{enc.escape}")
    return "".join(c if c.isprintable() else " " for c in out)


def build_ack(code: str, header: MessageHeader | None, *, text: str = "",
              error: AckError | None = None, application: str = "ECG-GATEWAY",
              now: datetime | None = None, ack_control_id: str | None = None) -> str:
    """One ACK message (segments joined by CR, no MLLP framing).

    ``code`` is AA/AE/AR or CA/CE/CR. ``header`` is None when MSH could not be read: the
    ACK then uses the default delimiters, version 2.5.1 and an empty MSA-2.
    """
    enc = header.encoding if header else Encoding()
    version = header.version if header and header.version in SUPPORTED_VERSIONS else DEFAULT_VERSION
    key = _version_key(version)
    raw = header.raw if header else {}
    trigger = header.trigger_event if header and header.trigger_event.isalnum() else ""
    msg_type = "ACK" + (f"{enc.component}{trigger}" if trigger else "")
    if trigger and key >= (2, 3, 1):
        msg_type += f"{enc.component}ACK"
    processing = header.processing_id if header and header.processing_id in ("P", "T", "D") else "P"
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    msh = [
        "MSH", enc.msh2, raw.get(5) or _escape(application, enc), raw.get(6, ""), raw.get(3, ""),
        raw.get(4, ""), stamp, "", msg_type, ack_control_id or f"ACK{uuid.uuid4().hex[:16].upper()}",
        processing, version,
    ]
    if header and header.charset:
        msh += ["", "", "", "", "", _escape(header.charset, enc)]
    msa = ["MSA", code, _escape(header.control_id, enc) if header else ""]
    if text and key < (2, 7):  # MSA-3 is withdrawn from v2.7 on
        msa.append(_escape(text, enc))
    segments = [enc.field.join(msh), enc.field.join(msa)]
    if error is not None:
        segments.append(_err_segment(error, enc, key))
    return "\r".join(segments)


def _err_segment(error: AckError, enc: Encoding, key: tuple[int, ...]) -> str:
    c, s = enc.component, enc.subcomponent
    label = TABLE_0357.get(error.code, "")
    loc = error.location
    if key < (2, 5):  # ERR-1 ELD: segment ^ sequence ^ field ^ code&text&HL70357
        where = [loc.segment, str(loc.sequence or ""), str(loc.field or "")] if loc else ["", "", ""]
        return enc.field.join(["ERR", c.join([*where, s.join([str(error.code), label, "HL70357"])])])
    erl = ""
    if loc:
        parts = [loc.segment, str(loc.sequence or 1), str(loc.field or "")]
        if loc.component:
            parts += ["1", str(loc.component)]
        erl = c.join(parts).rstrip(c)
    fields = ["ERR", "", erl, c.join([str(error.code), label, "HL70357"]), error.severity,
              "", "", _escape(error.text, enc)]
    return enc.field.join(fields)
