"""ACK judging (pure): only AA/CA echoing our MSH-10 delivers; AR is final; the rest retries."""

from __future__ import annotations

import pytest

from ecg_gateway.outbound.ack import Verdict, answers, judge_ack

MSH = "MSH|^~\\&|EHR|HOSP|GW|HOSP|20250101120000||ACK^R01^ACK|A1|P|2.5.1"


def ack(*segments: str, msh: str = MSH, sep: str = "\r") -> bytes:
    return sep.join((msh, *segments)).encode()


@pytest.mark.parametrize(("payload", "verdict", "reconnect", "error"), [
    (ack("MSA|AA|C1"), Verdict.DELIVERED, False, ""),
    (ack("MSA|CA|C1|ok"), Verdict.DELIVERED, False, ""),
    (ack("MSA|aa| C1 "), Verdict.DELIVERED, False, ""),
    (ack("MSA|AA|C1", sep="\n"), Verdict.DELIVERED, False, ""),
    (ack("MSA#AA#C1", msh="MSH#$~\\&#EHR#H#GW#H#2025##ACK#A1#P#2.5.1"), Verdict.DELIVERED, False, ""),
    (ack("MSA|AE|C1|PATIENT DOE unknown", "ERR|||103^Table value not found^HL70357|E"),
     Verdict.RETRY, False, "AE: application error at the EHR (ERR-3 103)"),
    (ack("MSA|CE|C1"), Verdict.RETRY, False, "CE: application error at the EHR"),
    (ack("MSA|AR|C1", "ERR|||207^Application internal error^HL70357|E"), Verdict.DEAD, False,
     "AR: rejected by the EHR (ERR-3 207)"),
    (ack("MSA|CR|C1"), Verdict.DEAD, False, "CR: rejected by the EHR"),
    (ack("MSA|AA|C2"), Verdict.RETRY, True, "for another message"),
    (ack("MSA|AR|C2"), Verdict.RETRY, True, "for another message"),  # not about ours
    (ack("MSA|AR|"), Verdict.RETRY, True, "for another message"),
    (ack("MSA|ZZ|C1"), Verdict.RETRY, True, "unknown MSA-1"),
    (ack("MSA|ZZCANARY^DOE|C1"), Verdict.RETRY, True, "unknown MSA-1 (not AA/AE/AR/CA/CE/CR)"),
    (ack("MSA|AR|C1", "ERR|||DOE^JANE^HL70357|E"), Verdict.DEAD, False,
     "AR: rejected by the EHR (ERR-3 not a table 0357 code)"),
    (ack("MSA|AE|C1", "ERR|||9999|E"), Verdict.RETRY, False,
     "AE: application error at the EHR (ERR-3 not a table 0357 code)"),
    (ack("MSA|AA|DOE^JANE"), Verdict.RETRY, True, "AA for another message (MSA-2 is not C1)"),
    (ack("PID|1||42"), Verdict.RETRY, True, "unreadable ACK"),
    (b"\xff\xfegarbage", Verdict.RETRY, True, "unreadable ACK"),
    (b"", Verdict.RETRY, True, "unreadable ACK"),
], ids=["AA", "CA", "lowercase-spaces", "LF-separators", "other-delimiters", "AE", "CE", "AR",
        "CR", "wrong-id", "AR-wrong-id", "AR-empty-id", "unknown-code", "MSA-1-echo", "ERR-3-echo",
        "ERR-3-not-0357", "MSA-2-echo", "no-MSA", "garbage",
        "empty"])
def test_t4_judge_ack(payload: bytes, verdict: Verdict, reconnect: bool, error: str) -> None:
    outcome = judge_ack(payload, "C1")
    assert outcome.verdict is verdict and outcome.reconnect is reconnect
    assert error in outcome.error and (error or outcome.error == "")
    assert "DOE" not in outcome.error and "ZZCANARY" not in outcome.error  # codes only (#29 D3)
    assert outcome.code in ("", "AA", "AE", "AR", "CA", "CE", "CR")


def test_answers_skips_only_acks_naming_another_message() -> None:
    assert answers(ack("MSA|AA|C1"), "C1") and not answers(ack("MSA|AA|C0"), "C1")
    assert answers(ack("MSA|AR|"), "C1") and answers(b"garbage", "C1")  # left to judge_ack
