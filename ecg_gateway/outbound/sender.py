"""Delivery loop over ``outbound`` rows: claim -> compose once -> MLLP send -> judge the ACK.

One row at a time, so a new acute result is always the next one sent (claims order by
priority, then id). The ORU is composed at the first attempt and stored in
``outbound.payload`` *before* it goes on the wire, so every retry (and a resend after a
crash) carries identical bytes and the same MSH-10. Backoff after a failed attempt, per
row and for the sender as a whole after a transport failure::

    delay = min(backoff_max_s, backoff_initial_s * 2 ** (attempt - 1)) * uniform(0.5, 1.0)

(capped exponential with "equal jitter": never less than half the step, so a dead EHR is
not hammered, yet senders that failed together spread out). Blocking DB work runs in
threads; the event loop only waits on the socket. Guarantee: at-least-once, idempotent
by MSH-10.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.config import Config
from ecg_gateway.ecg import Ecg, TriageCategory, unpack_tracing
from ecg_gateway.metrics import ACUTE_E2E_SECONDS, DELIVERIES, PDFS
from ecg_gateway.mllp import MllpClient, MllpError
from ecg_gateway.outbound.ack import AckOutcome, Verdict, answers, judge_ack
from ecg_gateway.outbound.oru import (
    ComposeError,
    MessageView,
    ResultView,
    compose_oru,
    is_stat,
    new_control_id,
)
from ecg_gateway.outbound.page import PageText, page_text
from ecg_gateway.security import client_context
from ecg_gateway.store import queue
from ecg_gateway.store.models import Message, Outbound, OutboundKind, Result

log = structlog.get_logger(__name__)

#: Longest a non-acute ORU waits for its PDF (acute: ``outbound.acute_pdf_budget_s``). Past
#: its budget an ORU goes without the PDF and a correction ORU (OBR-25 C) brings it.
OTHER_RENDER_BUDGET_S = 10.0
CORRECTION_RENDER_BUDGET_S = 60.0
LATE_RENDERS_KEPT = 64  # renders still running for a correction this process will compose
LEASE_MARGIN_S = 60.0


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    return min(max_s, initial_s * 2.0 ** max(attempt - 1, 0)) * rng.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class _Work:
    """A claimed row and, on its first attempt, what composing it needs (read in one txn)."""

    id: int
    attempt: int
    control_id: str
    category: str
    payload: bytes | None
    result_id: int = 0
    kind: str = OutboundKind.RESULT.value
    result: ResultView | None = None
    message: MessageView | None = None
    tracing: bytes | None = None  # results.tracing: the waveform the worker decoded


class Sender:
    """Delivers ORU^R01 messages over one persistent MLLP connection."""

    def __init__(self, sessions: sessionmaker[Session], config: Config, *,
                 acute_render_budget_s: float | None = None,
                 lease_s: float | None = None, rng: random.Random | None = None) -> None:
        self._sessions = sessions
        self._cfg = config.outbound
        self._poll_s = config.worker.poll_interval_s
        self._acute_budget_s = acute_render_budget_s or self._cfg.acute_pdf_budget_s
        self._late_renders: dict[int, asyncio.Future[bytes]] = {}  # result id -> running render
        self._rng = rng or random.Random()
        # a claimed row must outlive connect + write + ACK wait, or a second sender takes it
        self._lease_s = lease_s or self._cfg.lease_s or (
            self._cfg.connect_timeout_s + 2 * self._cfg.ack_timeout_s + LEASE_MARGIN_S)
        tls = (client_context(self._cfg.tls_ca_file, self._cfg.tls_cert_file, self._cfg.tls_key_file)
               if self._cfg.tls else None)
        self._client = (MllpClient(self._cfg.host, self._cfg.port,
                                   connect_timeout_s=self._cfg.connect_timeout_s,
                                   ack_timeout_s=self._cfg.ack_timeout_s, ssl_context=tls)
                        if self._cfg.host else None)
        self.destination = f"{self._cfg.host}:{self._cfg.port}" if self._cfg.host else None
        self.stats: Counter[str] = Counter()  # delivered / send_failed / dead, for metrics
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failures = 0  # consecutive transport failures (no ACK at all)
        self._timings: dict[str, float] = {}
        self._unrecorded: list[tuple[_Work, AckOutcome]] = []  # outcomes the database refused

    def nudge(self) -> None:
        """Wake the loop now (thread-safe: the worker calls it after committing a row)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a send in progress is finished first."""
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            log.warning("outbound_disabled", reason="no outbound.host configured; results are kept")
            await stop.wait()
            return
        log.info("outbound_sender_started", destination=self.destination, tls=self._client.ssl_context is not None)
        if self._cfg.attach_pdf:
            await asyncio.to_thread(_warm_up_renderer)
        db_failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()  # before claiming: a nudge from now on is not lost
                try:
                    await self.run_once(stop)
                    db_failures = 0
                except Exception as exc:  # noqa: BLE001 - e.g. database down: back off, go on
                    db_failures += 1
                    log.error("outbound_loop_failed", error=type(exc).__name__)
                failures = max(db_failures, self._failures)
                pause = backoff_s(failures, self._cfg.backoff_initial_s, self._cfg.backoff_max_s,
                                  self._rng) if failures else self._poll_s
                await self._sleep(stop, pause)  # a nudge (new result) ends any pause
        finally:
            await self._client.close()
            log.info("outbound_sender_stopped")

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Attempt every due row, one at a time, until none is due, the transport fails or
        ``stop`` is set. Returns the number of attempts made."""
        if self._client is None:
            return 0
        await self._record_late()
        attempts = 0
        while stop is None or not stop.is_set():
            work = await asyncio.to_thread(self._claim_next)
            if work is None:
                break
            attempts += 1
            if not await self._attempt(work):
                break  # the EHR is unreachable: the loop backs off before the next claim
        return attempts

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    # --- one attempt --------------------------------------------------------------------

    async def _attempt(self, work: _Work) -> bool:
        """Send one claimed row and record the outcome; False after a transport failure."""
        assert self._client is not None
        payload = work.payload
        self._timings = {}  # stage times of this attempt, for the delivered log line
        started = time.perf_counter()
        if payload is None:
            try:
                payload = await self._compose(work)
            except ComposeError as exc:  # this result can never make a valid ORU
                await self._record(work, AckOutcome(
                    Verdict.DEAD, "", f"cannot compose the ORU: {exc}"))
                return True
            except Exception as exc:  # noqa: BLE001 - e.g. the DB hiccupped storing the payload
                await self._record(work, AckOutcome(
                    Verdict.RETRY, "", f"composing failed: {type(exc).__name__}"))
                return True
        sent = time.perf_counter()
        self._timings["prepare_ms"] = round((sent - started) * 1000, 2)
        try:
            ack = await self._client.send(payload, partial(answers, control_id=work.control_id))
        except (MllpError, OSError) as exc:
            self._failures += 1
            await self._record(work, AckOutcome(
                Verdict.RETRY, "", f"{type(exc).__name__}: {exc}"))
            return False
        self._failures = 0
        self._timings["wire_ms"] = round((time.perf_counter() - sent) * 1000, 2)
        outcome = judge_ack(ack, work.control_id)
        if outcome.reconnect:
            await self._client.close()  # the stream is out of step: start clean
        await self._record(work, outcome, self._timings)
        return True

    async def _record(self, work: _Work, outcome: AckOutcome, timings: dict[str, float] | None = None) -> None:
        """Record an attempt's outcome. If the database refuses (e.g. a full disk), keep it and
        record it before the next claim: the row must not sit in ``sending`` until its lease
        ends, and an ORU the EHR accepted must not be sent again (issue #29)."""
        try:
            await asyncio.to_thread(self._finish, work, outcome, timings)
        except Exception:
            self._unrecorded.append((work, outcome))
            raise

    async def _record_late(self) -> None:
        """Record the outcomes the database refused earlier, oldest first (raises while it
        still refuses: the loop backs off)."""
        while self._unrecorded:
            work, outcome = self._unrecorded[0]
            await asyncio.to_thread(self._finish, work, outcome)
            self._unrecorded.pop(0)
            log.info("outbound_outcome_recorded_late", outbound_id=work.id, verdict=outcome.verdict.value)

    async def _compose(self, work: _Work) -> bytes:
        """The ORU from the stored rows: the acquisition time and the waveform are what the
        worker kept on the result (the raw message is decoded once, by the worker)."""
        assert work.result is not None and work.message is not None
        ecg: Ecg | None = None
        if work.tracing is not None and self._cfg.attach_pdf:
            try:
                ecg = unpack_tracing(work.tracing)
            except Exception as exc:  # noqa: BLE001 - the ORU still goes, without tracing
                log.warning("outbound_tracing_unreadable", outbound_id=work.id, error=type(exc).__name__)
        message = work.message
        correction = work.kind == OutboundKind.CORRECTION.value
        pdf, outcome = None, ""
        if self._cfg.attach_pdf:
            text = page_text(work.result, message)
            if correction:
                pdf = await self._late_pdf(work, ecg, text)
                if pdf is None:
                    await asyncio.to_thread(self._record_pdf, work, "missing")
                    raise ComposeError("the late PDF could not be rendered")
            elif ecg is None:
                outcome = "missing"
            else:
                budget = self._acute_budget_s if is_stat(work.category) else OTHER_RENDER_BUDGET_S
                pdf, outcome = await self._render(work, ecg, text, budget)
        payload = compose_oru(work.result, message, work.control_id, self._cfg, pdf,
                              now=datetime.now(UTC), correction=correction)
        return await asyncio.to_thread(self._store_payload, work, payload, outcome)

    async def _render(self, work: _Work, ecg: Ecg, text: PageText,
                      budget_s: float) -> tuple[bytes | None, str]:
        """(pdf, "attached") in time; (None, "late") past the budget, the render going on
        for the correction; (None, "missing") when the tracing cannot be drawn."""
        from ecg_gateway.outbound.render import render_pdf

        started = time.perf_counter()
        task = asyncio.ensure_future(asyncio.to_thread(render_pdf, ecg, text))
        try:
            pdf = await asyncio.wait_for(asyncio.shield(task), budget_s)
            self._timings["render_ms"] = round((time.perf_counter() - started) * 1000, 2)
            return pdf, "attached"
        except TimeoutError:
            log.warning("outbound_pdf_late", outbound_id=work.id, budget_ms=round(budget_s * 1000))
            while len(self._late_renders) >= LATE_RENDERS_KEPT:
                self._late_renders.pop(next(iter(self._late_renders))).cancel()
            self._late_renders[work.result_id] = task
            return None, "late"
        except Exception as exc:  # noqa: BLE001 - a tracing that cannot be drawn is not fatal
            log.warning("outbound_pdf_missing", outbound_id=work.id, reason=type(exc).__name__)
            return None, "missing"

    async def _late_pdf(self, work: _Work, ecg: Ecg | None, text: PageText) -> bytes | None:
        """The correction's PDF: the render still running from the first ORU, else a new one."""
        from ecg_gateway.outbound.render import render_pdf

        task = self._late_renders.pop(work.result_id, None)
        if task is None and ecg is not None:
            task = asyncio.ensure_future(asyncio.to_thread(render_pdf, ecg, text))
        if task is None:
            return None
        try:
            return await asyncio.wait_for(task, CORRECTION_RENDER_BUDGET_S)
        except Exception as exc:  # noqa: BLE001 - timeout or a render error: no PDF at all
            log.warning("outbound_pdf_missing", outbound_id=work.id, reason=type(exc).__name__)
            return None

    # --- database (run in threads) ------------------------------------------------------

    def _claim_next(self) -> _Work | None:
        with self._sessions.begin() as s:
            c = queue.claim_outbound(s, self._lease_s)
            if c is None:
                return None
            row = s.get_one(Outbound, c.id)
            result = s.get_one(Result, row.result_id)
            work = _Work(id=c.id, attempt=c.attempts, control_id=row.control_id,
                         category=result.category, payload=row.payload, result_id=row.result_id,
                         kind=row.kind)
            if row.payload is not None:
                self._record_sent(s, work, len(row.payload))
                return work
            message = s.get_one(Message, result.message_id)
            acquired = datetime.fromisoformat(result.acquired_at) if result.acquired_at else None
            return replace(work, result=ResultView.from_row(result),
                           message=MessageView.from_row(message, acquired), tracing=result.tracing)

    def _store_payload(self, work: _Work, payload: bytes, pdf: str) -> bytes:
        """Keep the first composed bytes for good (a concurrent composer's win is kept). A
        late PDF gets its correction row in the same transaction: it cannot be forgotten."""
        with self._sessions.begin() as s:
            kept = queue.keep_payload(s, work.id, payload)
            if kept is not None:
                payload = kept
            elif pdf in ("late", "missing"):
                self._pdf_event(s, work, pdf)
            self._record_sent(s, work, len(payload))
        return payload

    def _pdf_event(self, s: Session, work: _Work, outcome: str) -> None:
        """Count a late or missing PDF (metric, event); a late one gets its correction row."""
        queue.note_pdf(s, work.id, outcome, {"control_id": work.control_id, "category": work.category},
                       correction_control_id=new_control_id())
        PDFS.labels(outcome=outcome).inc()

    def _record_pdf(self, work: _Work, outcome: str) -> None:
        with self._sessions.begin() as s:
            self._pdf_event(s, work, outcome)

    def _record_sent(self, s: Session, work: _Work, size: int) -> None:
        queue.record_sent(s, work.id, self.destination,
                          {"control_id": work.control_id, "attempt": work.attempt,
                           "bytes": size, "category": work.category})

    def _finish(self, work: _Work, outcome: AckOutcome, timings: dict[str, float] | None = None) -> None:
        """Record the outcome; ``timings`` (ms per stage of this attempt) go on the delivered line."""
        fields = {"outbound_id": work.id, "control_id": work.control_id,
                  "attempt": work.attempt, "category": work.category}
        e2e_s = None
        detail = {"control_id": work.control_id, "attempt": work.attempt, "ack": outcome.code,
                  "error": outcome.error}
        with self._sessions.begin() as s:
            if outcome.verdict is Verdict.DELIVERED:
                if not queue.mark_delivered(s, work.id, self.destination, detail):
                    # our lease ran out while we waited, but the EHR has the message
                    log.warning("outbound_lease_lost", outbound_id=work.id)
                kind = "delivered"
                first = work.kind == OutboundKind.RESULT.value
                if work.category == TriageCategory.ACUTE.value and first:
                    e2e_s = _received_to_delivered_s(s, work.id)
                log.info("outbound_delivered", ack=outcome.code, **fields, **(timings or {}))
            elif outcome.verdict is Verdict.DEAD:
                queue.mark_dead(s, work.id, outcome.error, self.destination, detail)
                kind = "dead"
            else:
                delay = backoff_s(work.attempt, self._cfg.backoff_initial_s,
                                  self._cfg.backoff_max_s, self._rng)
                kind = queue.retry_outbound_later(s, work.id, outcome.error, delay, self.destination, detail)
                if kind == "send_failed":
                    log.warning("outbound_send_failed", error=outcome.error,
                                retry_in_s=round(delay, 3), **fields)
        if kind == "dead":  # an undelivered result needs a human: this is the alert
            log.error("outbound_dead", error=outcome.error, **fields)
        self.stats[kind] += 1
        DELIVERIES.labels(outcome=kind).inc()
        if e2e_s is not None:
            ACUTE_E2E_SECONDS.observe(e2e_s)


def _received_to_delivered_s(s: Session, row_id: int) -> float | None:
    """Seconds from the inbound commit to the EHR's ACK, both on the database clock."""
    row = s.execute(select(Message.received_at, Outbound.delivered_at)
                    .join(Result, Result.message_id == Message.id)
                    .join(Outbound, Outbound.result_id == Result.id)
                    .where(Outbound.id == row_id)).one_or_none()
    if row is None or row.received_at is None or row.delivered_at is None:
        return None
    return max(0.0, (row.delivered_at - row.received_at).total_seconds())


def _warm_up_renderer() -> None:
    from ecg_gateway.outbound.render import warm_up

    try:
        warm_up()
    except Exception as exc:  # noqa: BLE001 - the first render will just be slower
        log.warning("outbound_render_warm_up_failed", error=type(exc).__name__)
