"""Sender: the EHR fault matrix (reliability.md section 2) over real sockets and real DBs.

Every test runs on a real SQLite file and on real PostgreSQL (``sessions`` fixture). The
EHR is a scripted MLLP server on 127.0.0.1 that answers each ORU as its script says.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime

import pydicom
import pytest
import structlog.testing
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.config import Config
from ecg_gateway.ecg import STANDARD_LEADS, Demographics, Ecg, pack_tracing
from ecg_gateway.mllp import MllpDecoder, frame
from ecg_gateway.outbound.admin import list_outbound
from ecg_gateway.outbound.sender import Sender, backoff_s
from ecg_gateway.store.models import Event, Job, Message, Outbound, Result
from ecg_gateway.store.queue import retry_outbound

DICOM_PATH = get_testdata_file("waveform_ecg.dcm")
PATIENT = {"patient_id": "ZZCANARY-ID", "patient_name": "ZZCANARY^JANE", "birth_date": "19710123",
           "sex": "F", "location": "ED-1", "placer_order": "PL-1", "filler_order": "FI-1",
           "accession": "ACC-1"}
Sessions = sessionmaker[Session]


def decode_dicom(content_type: str, raw: bytes) -> Ecg:
    """A small real decoder for the tests (the worker's decode in serve is the dispatcher)."""
    assert content_type == "application/dicom"
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
    return Ecg(signal=ds.waveform_array(0).T / 1000.0,
               fs=float(ds.WaveformSequence[0].SamplingFrequency), leads=STANDARD_LEADS,
               source="dicom", uid=ds.SOPInstanceUID,
               acquired_at=datetime.strptime(ds.AcquisitionDateTime[:14], "%Y%m%d%H%M%S"),
               demographics=Demographics(patient_id=str(ds.PatientID)))


def config(port: int | None, **outbound: object) -> Config:
    out = {"host": "127.0.0.1" if port else None, "port": port or 2576, "connect_timeout_s": 0.5,
           "ack_timeout_s": 0.5, "max_attempts": 4, "backoff_initial_s": 0.01,
           "backoff_max_s": 0.05, "attach_pdf": False, **outbound}
    return Config(outbound=out, worker={"poll_interval_s": 0.02})


def add_outbound(sessions: Sessions, category: str = "acute", priority: int = 0,
                 max_attempts: int = 4, identifiers: dict[str, str] | None = None,
                 decoded: bool = True) -> int:
    """The rows the triage worker writes: message, job, result (with what the worker decoded,
    unless not ``decoded``) and outbound."""
    raw = open(DICOM_PATH, "rb").read()  # noqa: SIM115 - small file
    ecg = decode_dicom("application/dicom", raw) if decoded else None
    with sessions.begin() as s:
        n = s.scalar(select(Message.id).order_by(Message.id.desc()).limit(1)) or 0
        msg = Message(source="dicom", idempotency_key=f"1.2.3.{n + 1}", content_type="application/dicom",
                      sha256=hashlib.sha256(raw).hexdigest(), raw=raw, peer="CART1",
                      ecg_uid=f"1.2.3.{n + 1}", identifiers=identifiers or PATIENT)
        s.add(msg)
        s.flush()
        job = Job(message_id=msg.id, state="done")
        s.add(job)
        s.flush()
        probs = {"acute": (0.01, 0.02, 0.04, 0.93), "normal": (0.9, 0.05, 0.03, 0.02)}
        p = probs.get(category, (None, None, None, None))
        res = Result(message_id=msg.id, job_id=job.id, category=category, p_normal=p[0],
                     p_abnormal_not_acute=p[1], p_subacute=p[2], p_acute=p[3],
                     quality={}, model_id="ecg-resnet@test", model_sha256="ab" * 32,
                     acquired_at=ecg.acquired_at.isoformat() if ecg and ecg.acquired_at else None,
                     tracing=pack_tracing(ecg) if ecg else None)
        s.add(res)
        s.flush()
        row = Outbound(result_id=res.id, control_id=f"ECGGW{res.id:010d}", priority=priority,
                       max_attempts=max_attempts, destination="ehr")
        s.add(row)
        s.flush()
        return row.id


def control_of(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


def ack(code: str, control: str) -> bytes:
    err = "ERR|||207^Application internal error^HL70357|E|||ZZCANARY free text\r" \
        if code in ("AE", "AR") else ""
    return (f"MSH|^~\\&|EHR|HOSP|ECG-GATEWAY|HOSP|20250101120000||ACK^R01^ACK|A-{control}|P|2.5.1\r"
            f"MSA|{code}|{control}|ZZCANARY says hello\r{err}").encode()


NAME = "ZZCANARY^DOE^JANE"
_ECHO_MSH = "MSH|^~\\&|EHR|HOSP|ECG-GATEWAY|HOSP|20250101120000||ACK^R01^ACK|A1|P|2.5.1\r"
#: ACKs from an EHR that echoes a patient name where codes belong (issue #29, D3).
ECHOES: dict[str, Callable[[str], bytes]] = {
    "msa1": lambda control: f"{_ECHO_MSH}MSA|{NAME}|{control}\r".encode(),
    "msa2": lambda control: f"{_ECHO_MSH}MSA|AA|{NAME}\r".encode(),
    "err3": lambda control: f"{_ECHO_MSH}MSA|AR|{control}\rERR|||{NAME}|E\r".encode(),
    "err3-ae": lambda control: f"{_ECHO_MSH}MSA|AE|{control}\rERR|||{NAME}|E\r".encode(),
}


class FakeEhr:
    """MLLP server answering the n-th ORU as ``script[n]`` says (then AA forever).

    Steps: AA, CA, AE, AR (answer with that code); wrong (AA for another control id);
    close (hang up without an ACK); slow (answer after the sender's ACK timeout);
    split (AA sent in three packets); twice (AA, and the same AA again 0.2 s later);
    CA+AA (an accept ACK, then the application ACK 0.2 s later); echo (an ACK that
    carries a patient name in MSA-1, MSA-2 or ERR-3 instead of codes: see ECHOES).
    """

    def __init__(self, script: list[str] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeEhr:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = MllpDecoder()
        try:
            while data := await reader.read(65536):
                for payload in decoder.feed(data):
                    assert isinstance(payload, bytes)
                    self.received.append(payload)
                    step = self.script.pop(0) if self.script else "AA"
                    if not await self._answer(step, control_of(payload), writer):
                        return
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, step: str, control: str, writer: asyncio.StreamWriter) -> bool:
        if step == "close":
            return False
        if step == "slow":
            await asyncio.sleep(1.0)  # the sender gave up after 0.5 s and hung up
        if step in ("twice", "CA+AA"):
            first, late = ("AA", "AA") if step == "twice" else ("CA", "AA")
            writer.write(frame(ack(first, control)))
            asyncio.get_running_loop().call_later(0.2, writer.write, frame(ack(late, control)))
            return True
        if step.startswith("echo:"):
            writer.write(frame(ECHOES[step[5:]](control)))
            return True
        if step == "split":
            data = frame(ack("AA", control))
            for part in (data[:5], data[5:40], data[40:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.03)
            return True
        code, echoed = ("AA", "NOT-" + control) if step == "wrong" else (step, control)
        writer.write(frame(ack(code, echoed)))
        await writer.drain()
        return True


def states(sessions: Sessions) -> dict[int, tuple[str, int, str | None]]:
    with sessions() as s:
        rows = s.execute(select(Outbound.id, Outbound.state, Outbound.attempts,
                                Outbound.last_error)).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def events(sessions: Sessions, outbound_id: int) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(Event.kind).where(Event.outbound_id == outbound_id)
                              .order_by(Event.id)))


async def run_until(sender: Sender, done: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                    ) -> None:
    """Run the sender loop until ``done()`` holds, then stop it as ``serve`` would."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                assert not task.done(), "sender loop exited early"
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)


def settled(sessions: Sessions) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await asyncio.to_thread(states, sessions)
        return bool(rows) and all(state in ("delivered", "dead") for state, _, _ in rows.values())
    return check


async def deliver(sessions: Sessions, script: list[str], row: int | None = None,
                  **cfg: object) -> tuple[FakeEhr, int]:
    """Run the sender against a scripted EHR until every row is delivered or dead."""
    row = add_outbound(sessions) if row is None else row
    ehr = await FakeEhr(script).start()
    try:
        await run_until(Sender(sessions, config(ehr.port, **cfg)), settled(sessions))
    finally:
        await ehr.stop()
    return ehr, row


def assert_identical_resends(ehr: FakeEhr, sessions: Sessions, row: int) -> None:
    with sessions() as s:
        stored = s.scalar(select(Outbound.payload).where(Outbound.id == row))
        control = s.scalar(select(Outbound.control_id).where(Outbound.id == row))
    assert ehr.received and all(p == stored for p in ehr.received)  # same bytes every time
    assert {control_of(p) for p in ehr.received} == {control}


# --- the fault matrix ----------------------------------------------------------------------

@pytest.mark.parametrize(("script", "attempts", "kinds"), [
    ([], 1, ["sent", "delivered"]),
    (["CA"], 1, ["sent", "delivered"]),
    (["split"], 1, ["sent", "delivered"]),
    (["AE", "AE"], 3, ["sent", "send_failed", "sent", "send_failed", "sent", "delivered"]),
    (["slow"], 2, ["sent", "send_failed", "sent", "delivered"]),
    (["close"], 2, ["sent", "send_failed", "sent", "delivered"]),
    (["wrong"], 2, ["sent", "send_failed", "sent", "delivered"]),
], ids=["AA", "CA", "ack-split-over-packets", "AE-retried", "slow-beyond-ack-timeout",
        "closes-without-ack", "wrong-MSA-2"])
async def test_t4_fault_ends_delivered_with_identical_resends(sessions: Sessions, script: list[str],
                                                          attempts: int, kinds: list[str]) -> None:
    ehr, row = await deliver(sessions, script)
    state, n, _ = states(sessions)[row]
    assert (state, n) == ("delivered", attempts)
    assert len(ehr.received) == attempts
    assert_identical_resends(ehr, sessions, row)
    assert events(sessions, row) == kinds


@pytest.mark.parametrize("step", ["twice", "CA+AA"])
async def test_t4_late_and_duplicate_acks_are_skipped_not_taken_for_the_next_oru(
        sessions: Sessions, step: str) -> None:
    """Issue #29 D2: an EHR that sends each ACK twice (or CA, then AA) 0.2 s apart. The late
    copy waits in the socket until the next ORU is sent; it must be skipped (MSA-2 names the
    previous ORU), not taken as the answer, which used to resend ORUs the EHR had accepted."""
    ehr = await FakeEhr([step] * 4).start()
    sender = Sender(sessions, config(ehr.port))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    rows = []
    try:
        for _ in range(4):  # one ORU at a time, each after the previous one's late ACK came
            rows.append(await asyncio.to_thread(add_outbound, sessions))
            sender.nudge()
            async with asyncio.timeout(5):
                while (await asyncio.to_thread(states, sessions))[rows[-1]][0] != "delivered":
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)
        await ehr.stop()
    assert sorted(control_of(p) for p in ehr.received) == sorted({control_of(p) for p in ehr.received})
    assert len(ehr.received) == 4 and ehr.connections == 1
    assert [states(sessions)[row][:2] for row in rows] == [("delivered", 1)] * 4
    assert sender._client is not None and sender._client.stale_acks == 3  # the 4th is never read


@pytest.mark.parametrize(("echo", "state", "error"), [
    ("msa1", "pending", "unknown MSA-1 (not AA/AE/AR/CA/CE/CR)"),
    ("msa2", "pending", "1 ACK(s) for another message skipped"),
    ("err3", "dead", "AR: rejected by the EHR (ERR-3 not a table 0357 code)"),
    ("err3-ae", "pending", "AE: application error at the EHR (ERR-3 not a table 0357 code)"),
])
async def test_t14_only_codes_are_kept_from_the_ehr(sessions: Sessions, echo: str, state: str,
                                                   error: str) -> None:
    """Issue #29 D3: a patient name where the EHR should write codes (MSA-1, MSA-2, ERR-3)
    reaches neither ``outbound.last_error``, the events, the logs nor the admin page."""
    from ecg_gateway.web import AdminPage

    row = add_outbound(sessions, max_attempts=2 if state == "dead" else 9)
    ehr = await FakeEhr([f"echo:{echo}"]).start()
    sender = Sender(sessions, config(ehr.port, backoff_initial_s=60, backoff_max_s=60))
    try:
        with structlog.testing.capture_logs() as logs:
            await sender.run_once()
    finally:
        await ehr.stop()
    got_state, attempts, last_error = states(sessions)[row]
    assert (got_state, attempts) == (state, 1) and last_error is not None and error in last_error
    with sessions() as s:
        details = repr(s.scalars(select(Event.detail).where(Event.outbound_id == row)).all())
    page = b"".join(AdminPage(sessions, None, dict).index({"REQUEST_METHOD": "GET"}, lambda *a: None))
    for where in (last_error, details, repr(logs), page.decode()):
        assert "ZZCANARY" not in where and "DOE" not in where


async def test_t4_wrong_msa2_reconnects_before_the_resend(sessions: Sessions) -> None:
    ehr, _ = await deliver(sessions, ["wrong"])
    assert ehr.connections == 2


@pytest.mark.parametrize(("script", "attempts", "error"), [
    (["AR"], 1, "AR: rejected by the EHR (ERR-3 207)"),
    (["AE"] * 4, 4, "AE: application error at the EHR (ERR-3 207)"),
    (["close"] * 4, 4, "MllpConnectionError"),
    (["slow"] * 4, 4, "MllpTimeout"),
    (["wrong"] * 4, 4, "for another message"),
], ids=["AR", "AE-past-max-attempts", "closes-past-max-attempts", "slow-past-max-attempts",
        "wrong-MSA-2-past-max-attempts"])
async def test_t4_fault_ends_dead_with_last_error(sessions: Sessions, script: list[str],
                                              attempts: int, error: str) -> None:
    ehr, row = await deliver(sessions, script)
    state, n, last_error = states(sessions)[row]
    assert (state, n) == ("dead", attempts) and last_error is not None and error in last_error
    assert "ZZCANARY" not in last_error  # the EHR's free text is never kept
    assert events(sessions, row)[-1] == "dead"
    assert len(ehr.received) == attempts
    assert_identical_resends(ehr, sessions, row)


async def test_t4_ehr_down_then_up_delivers_the_stored_message(sessions: Sessions) -> None:
    row = add_outbound(sessions, max_attempts=50)
    with socket.socket() as probe:  # a port with nobody listening: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = Sender(sessions, config(port))
    ehr = FakeEhr()

    async def after_failures_then_delivered() -> bool:
        state, n, _ = (await asyncio.to_thread(states, sessions))[row]
        if n >= 2 and ehr.server is None:
            await ehr.start(port)  # the EHR comes back
        return state == "delivered"

    try:
        await run_until(sender, after_failures_then_delivered)
    finally:
        await ehr.stop()
    state, n, _ = states(sessions)[row]
    # n counts claims: the EHR may come back while attempt 2 is connecting, so n >= 2
    assert state == "delivered" and n >= 2 and len(ehr.received) == 1
    kinds = events(sessions, row)
    assert kinds[-2:] == ["sent", "delivered"] and kinds.count("send_failed") == n - 1 >= 1


async def test_t4_ehr_down_for_good_ends_dead(sessions: Sessions) -> None:
    row = add_outbound(sessions, max_attempts=3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await run_until(Sender(sessions, config(port)), settled(sessions))
    state, n, last_error = states(sessions)[row]
    assert (state, n) == ("dead", 3) and "cannot connect" in (last_error or "")


# --- ordering, policy, composing --------------------------------------------------------------

async def test_acute_goes_first_then_by_age(sessions: Sessions) -> None:
    normal_old = add_outbound(sessions, "normal", priority=50)
    unreadable = add_outbound(sessions, "uninterpretable", priority=10)
    normal_new = add_outbound(sessions, "normal", priority=50)
    acute = add_outbound(sessions, "acute", priority=0)
    ehr, _ = await deliver(sessions, [], row=acute)
    with sessions() as s:
        controls = dict(s.execute(select(Outbound.id, Outbound.control_id)).all())
    assert [control_of(p) for p in ehr.received] == [
        controls[i] for i in (acute, unreadable, normal_old, normal_new)]


async def test_pdf_is_attached_and_stored_payload_is_what_was_sent(sessions: Sessions) -> None:
    row = add_outbound(sessions)
    with sessions.begin() as s:  # the sender never decodes the raw message (issue #31)
        s.execute(Message.__table__.update().values(raw=b"not an ECG"))
    ehr = await FakeEhr().start()
    sender = Sender(sessions, config(ehr.port, attach_pdf=True), acute_render_budget_s=30.0)
    try:
        await run_until(sender, settled(sessions), timeout=30.0)
    finally:
        await ehr.stop()
    assert states(sessions)[row][0] == "delivered"
    (oru,) = ehr.received
    segments = oru.decode().rstrip("\r").split("\r")
    assert segments[-1].startswith("OBX|7|ED|11524-6^EKG study^LN||^Application^PDF^Base64^JVBER")
    obr = next(s for s in segments if s.startswith("OBR|")).split("|")
    assert obr[7] == "20130125105919"  # acquisition time the worker kept from the decoded DICOM
    assert "ZZCANARY^JANE" in segments[1]  # PID copied from the inbound identifiers
    assert_identical_resends(ehr, sessions, row)
    parsed = parse_message(oru.decode(), validation_level=VALIDATION_LEVEL.TOLERANT)
    assert parsed.validate()  # raises on the first error


async def test_late_pdf_follows_in_a_correction_oru(sessions: Sessions) -> None:
    """Issue #27: a render past the acute budget never delays the ORU, and is never lost."""
    row = add_outbound(sessions)
    ehr = await FakeEhr(["AE"]).start()  # the first ORU is refused once: the correction waits
    sender = Sender(sessions, config(ehr.port, attach_pdf=True, acute_pdf_budget_s=0.001))
    try:
        await run_until(sender, settled(sessions), timeout=30.0)
    finally:
        await ehr.stop()
    rows = states(sessions)
    assert len(rows) == 2 and all(state == "delivered" for state, _, _ in rows.values())
    first, retried, corrected = ehr.received
    assert first == retried and b"|ED|" not in first
    assert b"|ED|" in corrected and control_of(corrected) != control_of(first)
    obr = [seg.split("|") for p in (first, corrected) for seg in p.decode().split("\r")
           if seg.startswith("OBR|")]
    assert (obr[0][25], obr[1][25]) == ("P", "C") and obr[0][2:4] == obr[1][2:4] == ["PL-1", "FI-1"]
    with sessions() as s:
        kinds = dict(s.execute(select(Outbound.id, Outbound.kind)).all())
    assert kinds == {row: "result", row + 1: "correction"}
    assert "oru_pdf_late" in events(sessions, row)
    listed = {r["id"]: r for r in list_outbound(sessions)}
    assert listed[row]["last_error"] is None  # delivered: the AE is history, not the state


async def test_result_without_a_tracing_still_sends(sessions: Sessions) -> None:
    """The worker kept no waveform (none decoded, or no PDF wanted then): no PDF, no decode."""
    row = add_outbound(sessions, decoded=False)
    ehr = await FakeEhr().start()
    try:
        await run_until(Sender(sessions, config(ehr.port, attach_pdf=True)), settled(sessions))
    finally:
        await ehr.stop()
    assert states(sessions)[row][0] == "delivered"
    assert b"|ED|" not in ehr.received[0] and b"acute^Acute^99ECGGW" in ehr.received[0]
    assert "oru_pdf_missing" in events(sessions, row) and len(states(sessions)) == 1


async def test_t14_logs_carry_no_phi(sessions: Sessions) -> None:
    with structlog.testing.capture_logs() as logs:
        await deliver(sessions, ["AE", "wrong", "close"], attach_pdf=True)
        await deliver(sessions, ["AR"])
    kinds = {entry["event"] for entry in logs}
    assert {"outbound_delivered", "outbound_send_failed", "outbound_dead"} <= kinds
    assert "ZZCANARY" not in repr(logs)


async def test_result_without_patient_id_is_dead_with_reason(sessions: Sessions) -> None:
    row = add_outbound(sessions, identifiers={"patient_name": "X^Y"})
    ehr, _ = await deliver(sessions, [], row=row)
    state, n, last_error = states(sessions)[row]
    assert state == "dead" and n == 1 and "no patient identifier" in (last_error or "")
    assert ehr.received == []


async def test_nudge_wakes_the_idle_sender(sessions: Sessions) -> None:
    ehr = await FakeEhr().start()
    cfg = config(ehr.port).model_copy(update={"worker": Config().worker.model_copy(
        update={"poll_interval_s": 60.0})})
    sender = Sender(sessions, cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await asyncio.sleep(0.2)  # idle now, for a 60 s poll interval
        row = await asyncio.to_thread(add_outbound, sessions)
        sender.nudge()
        async with asyncio.timeout(5):
            while states(sessions)[row][0] != "delivered":
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)
        await ehr.stop()


async def test_no_destination_keeps_results_and_sends_nothing(sessions: Sessions) -> None:
    row = add_outbound(sessions)
    sender = Sender(sessions, config(None))
    assert await sender.run_once() == 0
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert states(sessions)[row] == ("pending", 0, None)


async def test_t3_crash_while_waiting_for_ack_resends_same_bytes(sessions: Sessions) -> None:
    row = add_outbound(sessions)
    ehr = await FakeEhr(["slow"]).start()  # first ORU: no ACK before the "crash"
    cfg = config(ehr.port, ack_timeout_s=5.0)
    first = asyncio.create_task(Sender(sessions, cfg, lease_s=0.5).run_once())
    try:
        async with asyncio.timeout(5):
            while not ehr.received:
                await asyncio.sleep(0.01)
        first.cancel()  # the process dies mid-send: the row stays leased ("sending")
        with pytest.raises(asyncio.CancelledError):
            await first
        assert states(sessions)[row][0] == "sending"
        await asyncio.sleep(0.6)  # the lease expires; another sender takes over
        await run_until(Sender(sessions, cfg), settled(sessions))
    finally:
        await ehr.stop()
    assert states(sessions)[row][:2] == ("delivered", 2)
    assert len(ehr.received) == 2
    assert_identical_resends(ehr, sessions, row)


# --- operator actions -----------------------------------------------------------------------

async def test_list_has_no_phi_and_retry_requeues_dead_with_same_bytes(sessions: Sessions) -> None:
    row = add_outbound(sessions, max_attempts=1)
    ehr, _ = await deliver(sessions, ["AE"], row=row)
    (listed,) = list_outbound(sessions, "dead")
    assert listed["id"] == row and listed["category"] == "acute" and listed["attempts"] == 1
    assert listed["control_id"] == control_of(ehr.received[0]) and "AE" in listed["last_error"]
    assert "ZZCANARY" not in repr(list_outbound(sessions))
    assert list_outbound(sessions, "delivered") == []
    with pytest.raises(ValueError, match="unknown state"):
        list_outbound(sessions, "lost")

    assert retry_outbound(sessions, [row], dead=False) == 1
    assert states(sessions)[row] == ("pending", 0, listed["last_error"])
    again = await FakeEhr().start()
    try:
        await run_until(Sender(sessions, config(again.port)), settled(sessions))
    finally:
        await again.stop()
    assert states(sessions)[row][0] == "delivered"
    assert again.received == ehr.received  # identical bytes, same MSH-10, after the requeue
    assert retry_outbound(sessions, None, dead=True) == 0  # nothing dead any more
    with sessions() as s:
        audit = s.scalars(select(Event.detail).where(Event.kind == "admin_outbound_requeue")).all()
    assert audit == [{"ids": [row], "dead": False, "requeued": 1, "hurried": 0},
                     {"ids": None, "dead": True, "requeued": 0, "hurried": 0}]


async def test_retry_without_ids_cuts_pending_backoff(sessions: Sessions) -> None:
    row = add_outbound(sessions)
    with sessions.begin() as s:
        s.execute(Outbound.__table__.update().where(Outbound.id == row)
                  .values(run_after=datetime(2999, 1, 1)))
    assert retry_outbound(sessions) == 1
    ehr = await FakeEhr().start()
    try:
        await run_until(Sender(sessions, config(ehr.port)), settled(sessions))
    finally:
        await ehr.stop()
    assert states(sessions)[row][0] == "delivered"


@pytest.mark.parametrize("seed", range(5))
def test_t4_backoff_is_capped_exponential_with_jitter(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 14):
        step = min(300.0, 2.0 ** (attempt - 1))
        assert step * 0.5 <= backoff_s(attempt, 1.0, 300.0, rng) <= step
