"""Read the EHR's ACK to one ORU and decide what happens to the outbound row (pure).

Only MSA-1 ``AA``/``CA`` with MSA-2 equal to our MSH-10 counts as delivered. ``AE``/``CE``
(application error), a wrong MSA-2 and an unreadable ACK are retried with backoff; ``AR``/
``CR`` (application reject) is final. Issue #5 overrides reliability.md's "AE -> dead letter":
receivers disagree on AE vs AR (formats.md 5.3) and a retry is cheaper than a lost acute
result, so AE retries until ``max_attempts`` and then goes to ``dead`` anyway.

A few lines of splitting instead of hl7apy: an ACK is tiny and only MSA and ERR matter.
The same reading serves ``send-hl7`` (:func:`summarize_ack`), which shows an installer the
gateway's own ACK. Of the peer's words only MSA-1 (one of the six codes) and an ERR-3 code from HL7 table 0357
are kept (issue #29): receivers echo patient data in MSA-2, MSA-3, ERR-3 and ERR-8, so
anything else the EHR wrote never reaches ``outbound.last_error``, the logs or the admin page.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ecg_gateway.inbound.hl7_ack import TABLE_0357


class Verdict(str, enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class AckOutcome:
    verdict: Verdict
    code: str  # MSA-1, or "" when the ACK could not be read
    error: str  # for last_error / events: codes and our words only, no peer text
    reconnect: bool = False  # the connection is out of step (wrong or unreadable ACK)


_ACCEPT = frozenset({"AA", "CA"})
_ERROR = frozenset({"AE", "CE"})
_REJECT = frozenset({"AR", "CR"})
_CODES = _ACCEPT | _ERROR | _REJECT
_TABLE_0357 = frozenset(str(code) for code in TABLE_0357)


def answers(payload: bytes, control_id: str) -> bool:
    """False only for an ACK that names another message in MSA-2 (a late or duplicate ACK
    of an earlier ORU, to be skipped); anything unreadable is left to :func:`judge_ack`."""
    echoed = _field(_segments(payload).get("MSA"), 2)
    return not echoed or echoed == control_id


def judge_ack(payload: bytes, control_id: str) -> AckOutcome:
    """Classify the ACK ``payload`` received for the message whose MSH-10 is ``control_id``."""
    fields = _segments(payload)
    msa = fields.get("MSA")
    if msa is None:
        return AckOutcome(Verdict.RETRY, "", "unreadable ACK (no MSH/MSA)", reconnect=True)
    code = _field(msa, 1).upper()
    code = code if code in _CODES else ""
    echoed = _field(msa, 2)
    code_357 = _err3_code(fields)
    detail = (f" (ERR-3 {code_357})" if code_357 in _TABLE_0357 else
              " (ERR-3 not a table 0357 code)" if code_357 else "")
    if echoed != control_id:  # not about our message, whatever it says
        return AckOutcome(Verdict.RETRY, code, f"{code or 'ACK'} for another message "
                          f"(MSA-2 is not {control_id})", reconnect=True)
    if code in _REJECT:
        return AckOutcome(Verdict.DEAD, code, f"{code}: rejected by the EHR{detail}")
    if code in _ACCEPT:
        return AckOutcome(Verdict.DELIVERED, code, "")
    if code in _ERROR:
        return AckOutcome(Verdict.RETRY, code, f"{code}: application error at the EHR{detail}")
    return AckOutcome(Verdict.RETRY, code, "unknown MSA-1 (not AA/AE/AR/CA/CE/CR)", reconnect=True)


def summarize_ack(payload: bytes) -> dict[str, str] | None:
    """For ``send-hl7``: the MSA segment as received, MSA-1/2/3 and ERR-3's code, or None
    without an MSA. Only for ACKs from our own gateway: the text is shown, never stored."""
    fields = _segments(payload)
    msa = fields.get("MSA")
    if msa is None:
        return None
    return {"msa": fields["MSH"][1].join(msa), "code": _field(msa, 1), "control_id": _field(msa, 2),
            "text": _field(msa, 3), "error_code": _err3_code(fields)}


def _err3_code(fields: dict[str, list[str]]) -> str:
    """ERR-3's first component (the table 0357 code, if the peer used one)."""
    component = fields["MSH"][2][:1] or "^"  # MSH-2 starts with the component separator
    return _field(fields.get("ERR"), 3).split(component, 1)[0].strip()


def _segments(payload: bytes) -> dict[str, list[str]]:
    """First MSA and ERR segments split into fields (index = HL7 field number); "MSH" maps
    to ``["MSH", MSH-1, MSH-2]`` (the field separator and the encoding characters)."""
    text = payload.decode("utf-8", errors="replace").replace("\n", "\r")
    lines = [line.strip() for line in text.split("\r") if line.strip()]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        return {}
    sep = lines[0][3]
    found: dict[str, list[str]] = {"MSH": ["MSH", sep, lines[0][4:].split(sep, 1)[0]]}
    for line in lines[1:]:
        name = line[:3]
        if name in ("MSA", "ERR") and name not in found:
            found[name] = line.split(sep)
    return found


def _field(fields: list[str] | None, n: int) -> str:
    return fields[n].strip() if fields is not None and len(fields) > n else ""
