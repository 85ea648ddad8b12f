"""The triage worker: claim a batch → decode → gate → infer → commit results.

A claim loop over ``jobs`` (the database is the only channel between stages). Each batch
is committed in ONE transaction: result rows, job completions, outbound rows for the
categories the EHR wants, and events — so a crash leaves either all of it or none, and
the lease brings the jobs back. Jobs are claimed by priority, then id (FIFO), so an
acute ECG waits behind at most the ECGs that arrived before it.

Without a usable model the worker claims nothing, reports itself unhealthy and retries
loading every ``model_retry_s``; ingest goes on, jobs wait. No job is completed without
a real model run (the quality gate's "uninterpretable" is a real verdict, never a
default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import structlog
import torch
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.audit import record_event
from ecg_gateway.config import Config
from ecg_gateway.ecg import UNINTERPRETABLE, Ecg, TriageCategory, pack_tracing
from ecg_gateway.errors import CheckpointError, GatewayError
from ecg_gateway.gcfreeze import freeze_heap
from ecg_gateway.metrics import BATCH_SIZE, INFERENCE_SECONDS, MODEL_INFO, TRIAGED
from ecg_gateway.outbound.oru import new_control_id
from ecg_gateway.store import queue
from ecg_gateway.store.models import Message, Outbound, Result
from ecg_gateway.store.queue import Claimed
from ecg_gateway.triage.model import TriageModel, load_model, set_operating_point
from ecg_gateway.triage.service import TriageOutcome, Triager

log = structlog.get_logger(__name__)

Decoder = Callable[[str, bytes], Ecg]
OUTBOUND_PRIORITY = {TriageCategory.ACUTE.value: 0, UNINTERPRETABLE: 10}
DEFAULT_OUTBOUND_PRIORITY = 50
MAX_FAILURES_HEALTHY = 3  # consecutive failed batches before the worker reports unhealthy
WARM_UP_MAX_BATCH = 64  # batch sizes warmed at model load; larger ones build their state on first use


@dataclass
class _Item:
    job: Claimed
    ecg_uid: str | None
    content_type: str
    raw: bytes | None  # dropped once decoded
    ecg: Ecg | None = None
    outcome: TriageOutcome | None = None
    error: str | None = None
    committed: bool = False


class Worker:
    """Runs in its own thread (``run``) or process (``serve --role worker``)."""

    def __init__(self, sessions: sessionmaker[Session], config: Config, decode: Decoder,
                 nudge: threading.Event | None = None, *,
                 load: Callable[[str | None, str], TriageModel] | None = None,
                 model_retry_s: float = 10.0, retry_delay_s: float = 5.0,
                 on_results: Callable[[], None] | None = None, cpu_cores: int | None = None) -> None:
        """``on_results`` runs after each commit that wrote results (wakes the sender);
        ``cpu_cores``: the CPU cores inference may use, as single-threaded lanes."""
        self._sessions = sessions
        self._on_results = on_results or (lambda: None)
        self._config = config
        self._decode = decode
        self._nudge = nudge
        self._load = load or partial(load_model, cpu_precision=config.model.cpu_precision, cpu_cores=cpu_cores)
        self._model_retry_s = model_retry_s
        self._retry_delay_s = retry_delay_s
        self._batch_size = config.model.batch_size
        self._triager: Triager | None = None
        self._model_error: str | None = None
        self._next_load = 0.0
        self._last_error: str | None = None
        self.heartbeat = time.time()
        self.processed = 0
        self.failures = 0  # consecutive batches that raised (e.g. database unreachable)
        self._unreleased: list[Claimed] = []  # claimed by a batch that failed, not yet given back
        self._release_reason = ""

    # --- health ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        stale_after = max(30.0, 3 * self._config.worker.poll_interval_s)
        return (self._triager is not None and self.failures < MAX_FAILURES_HEALTHY
                and time.time() - self.heartbeat < stale_after)

    @property
    def health_detail(self) -> dict[str, Any]:
        model = self._triager.model if self._triager else None
        return {
            "state": "ok" if self.healthy else "degraded",
            "model_loaded": model is not None,
            "model_id": model.model_id if model else None,
            "model_sha256": model.sha256 if model else None,
            "placeholder": model.placeholder if model else None,
            "device": str(model.device) if model else None,
            "precision": model.precision if model else None,
            "cpu_lanes": model.lanes if model else None,
            "model_error": self._model_error,
            "last_error": self._last_error,
            "consecutive_failures": self.failures,
            "heartbeat_age_s": round(time.time() - self.heartbeat, 3),
            "processed": self.processed,
            "batch_size": self._batch_size,
        }

    # --- model ---------------------------------------------------------------------------

    def ensure_model(self) -> bool:
        """Load the model if we have none and the retry interval has passed."""
        if self._triager is not None:
            return True
        now = time.monotonic()
        if now < self._next_load:
            return False
        self._next_load = now + self._model_retry_s
        try:
            model = set_operating_point(self._load(self._config.model.path, self._config.model.device),
                                        self._config.model.acute_flag_budget, self._config.model.acute_threshold)
        except Exception as exc:  # noqa: BLE001 - CheckpointError, or e.g. a CUDA error on .to()
            reason = str(exc) if isinstance(exc, CheckpointError) else f"model load failed: {type(exc).__name__}"
            if self._model_error != reason:
                log.error("model_unavailable", reason=reason, retry_s=self._model_retry_s)
            self._model_error = reason
            return False
        warm_up_s = self._warm_up(model)
        self._triager, self._model_error = Triager(model), None
        freeze_heap()
        detail = {"model_id": model.model_id, "sha256": model.sha256, "placeholder": model.placeholder,
                  "thresholds": dict(model.thresholds), "acute_flag_budget": model.acute_budget,
                  "statements": model.n_statements, "members": len(model.members),
                  "device": str(model.device), "precision": model.precision,
                  "fs": model.contract.fs, "length": model.contract.length,
                  "leads": list(model.contract.leads)}
        MODEL_INFO.info({k: str(v) for k, v in detail.items() if k in ("model_id", "sha256", "placeholder",
                                                                       "device")})
        try:
            with self._sessions.begin() as session:  # `ecg-gateway status` reads this event
                record_event(session, "model_loaded", actor="worker", detail=detail)
        except SQLAlchemyError as exc:
            log.warning("model_event_not_recorded", error=type(exc).__name__)
        log.info("worker_model_ready", model_id=model.model_id, sha256=model.sha256,
                 device=str(model.device), precision=model.precision, placeholder=model.placeholder,
                 warm_up_s=warm_up_s)
        return True

    def _warm_up(self, model: TriageModel) -> float | None:
        """Build the model's per-batch-size state now (``TriageModel.warm_up``); a failure
        (e.g. out of memory at a large batch on a small GPU) is logged, not fatal: such
        batches are split at run time."""
        try:
            return round(model.warm_up(min(self._batch_size, WARM_UP_MAX_BATCH)), 3)
        except Exception as exc:  # noqa: BLE001 - any failure here leaves a working model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("model_warm_up_failed", error=type(exc).__name__)
            return None

    # --- loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Claim and process until ``stop`` is set; never exits on an error."""
        while not stop.is_set():
            if self._nudge is not None:
                self._nudge.clear()  # a nudge arriving while we work wakes the next wait
            try:
                n = self.run_once()
                self.failures = 0
            except Exception as exc:  # noqa: BLE001 - DB down, bugs: log, back off, go on
                self.failures += 1
                self._last_error = f"{type(exc).__name__}"
                log.error("worker_batch_failed", error=type(exc).__name__, failures=self.failures)
                self._release()
                stop.wait(min(30.0, self._config.worker.poll_interval_s * 2 ** min(self.failures, 5)))
                continue
            if n < self._batch_size:
                self._wait(stop, self._config.worker.poll_interval_s)

    def _wait(self, stop: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._nudge is None:
                stop.wait(left)
            elif self._nudge.wait(min(left, 0.1)):
                return

    def run_once(self) -> int:
        """Process one batch; return the number of jobs claimed (0 without a model)."""
        self.heartbeat = time.time()
        if not self.ensure_model():
            return 0
        if self._unreleased and not self._release():
            raise RuntimeError("the jobs of a failed batch could not be given back yet")
        started = time.perf_counter()
        items = self._claim()
        if not items:
            return 0
        try:
            for item in items:
                self._decode_one(item)
            inferring = time.perf_counter()
            self._infer([i for i in items if i.ecg is not None])
            latency_ms = (time.perf_counter() - started) * 1000
            self._commit(items, latency_ms, infer_ms=(time.perf_counter() - inferring) * 1000)
        except Exception as exc:
            self._unreleased = [i.job for i in items]  # the commit is all or nothing
            self._release_reason = f"batch failed: {type(exc).__name__}"
            raise
        self.heartbeat = time.time()
        return len(items)

    def _release(self) -> bool:
        """Give the jobs of a failed batch back at once (queue.release_jobs), not after their lease;
        False if the database still fails (they are tried again before the next claim)."""
        if not self._unreleased:
            return True
        error = self._release_reason
        try:
            with self._sessions.begin() as session:
                states = queue.release_jobs(session, self._unreleased, error)
        except SQLAlchemyError as exc:
            log.warning("worker_release_failed", jobs=len(self._unreleased), error=type(exc).__name__)
            return False
        log.warning("worker_batch_released", jobs=len(self._unreleased), released=len(states),
                    job_ids=[job.id for job in self._unreleased])
        self._unreleased = []
        return True

    # --- steps ---------------------------------------------------------------------------

    def _claim(self) -> list[_Item]:
        with self._sessions.begin() as session:
            jobs = queue.claim_jobs(session, self._batch_size, self._config.worker.lease_s)
            if not jobs:
                return []
            rows = session.execute(
                select(Message.id, Message.content_type, Message.raw, Message.ecg_uid)
                .where(Message.id.in_([j.ref_id for j in jobs]))
            ).all()
        by_id = {r.id: r for r in rows}
        return [_Item(job, by_id[job.ref_id].ecg_uid, by_id[job.ref_id].content_type,
                      by_id[job.ref_id].raw) for job in jobs]

    def _decode_one(self, item: _Item) -> None:
        raw, item.raw = item.raw, None
        try:
            item.ecg = self._decode(item.content_type, raw or b"")
        except GatewayError as exc:
            item.error = f"decode failed: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a decoder bug is a poison input too
            item.error = f"decode failed: {type(exc).__name__}"

    def _infer(self, items: list[_Item]) -> None:
        """Run the model; on failure (e.g. out of memory) halve the batch and retry."""
        if not items:
            return
        assert self._triager is not None
        started = time.perf_counter()
        try:
            outcomes = self._triager.triage([i.ecg for i in items])  # type: ignore[misc]
            INFERENCE_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(items))
        except Exception as exc:  # noqa: BLE001 - OOM or a runtime error in the model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                items[0].error = f"model failed: {type(exc).__name__}"
                log.warning("inference_failed", job_id=items[0].job.id, error=type(exc).__name__)
                return
            half = len(items) // 2
            log.warning("inference_batch_split", size=len(items), error=type(exc).__name__)
            self._infer(items[:half])
            self._infer(items[half:])
            return
        for item, outcome in zip(items, outcomes, strict=True):
            item.outcome = outcome

    def _commit(self, items: list[_Item], latency_ms: float, infer_ms: float = 0.0) -> None:
        """Results, completions, outbound rows and events: one transaction. ``infer_ms``: the
        model's share of ``latency_ms`` (gate, preprocess, forward), for the log line."""
        done = failed = lost = 0
        with self._sessions.begin() as session:
            for item in items:
                if not queue.job_held(session, item.job):
                    lost += 1
                    log.warning("lease_lost", job_id=item.job.id)
                    continue
                if item.outcome is None:
                    failed += 1
                    state = queue.fail_job(session, item.job, item.error,
                                           self._retry_delay_s * item.job.attempts)
                    log.warning("triage_failed", job_id=item.job.id, ecg_uid=item.ecg_uid,
                                error=item.error, state=state)
                    continue
                if not self._write_result(session, item, latency_ms):
                    lost += 1
                    continue
                item.committed = True
                done += 1
        self.processed += done
        if done:
            self._on_results()
        for item in items:
            if item.outcome is not None and item.committed:
                TRIAGED.labels(category=item.outcome.category).inc()
        if failed and not done and self._all_model_failures(items) and not self._model_selftest():
            self._drop_model("the model fails even on a blank input")
        log.info("batch_committed", done=done, failed=failed, lease_lost=lost,
                 latency_ms=round(latency_ms, 1), infer_ms=round(infer_ms, 1))

    def _write_result(self, session: Session, item: _Item, latency_ms: float) -> bool:
        """The result, its ORU row if the EHR wants this category, and the job's completion
        (queue.finish_job); False if the lease was lost."""
        outcome, ecg = item.outcome, item.ecg
        assert outcome is not None
        probs = outcome.probabilities or {}
        result = Result(
            message_id=item.job.ref_id, job_id=item.job.id, category=outcome.category,
            p_normal=probs.get("normal"), p_abnormal_not_acute=probs.get("abnormal_not_acute"),
            p_subacute=probs.get("subacute"), p_acute=probs.get("acute"),
            quality={**outcome.quality.to_json(), "model_placeholder": outcome.placeholder},
            model_id=outcome.model_id,
            model_sha256=outcome.model_sha256, latency_ms=latency_ms,
            statements=[st.to_json() for st in outcome.statements],
            measurements=outcome.measurements.to_json(),
            decision=outcome.decision.to_json() if outcome.decision is not None else None,
            acquired_at=ecg.acquired_at.isoformat() if ecg is not None and ecg.acquired_at else None,
        )
        out_cfg = self._config.outbound
        oru = None
        if outcome.category in out_cfg.categories:
            if out_cfg.attach_pdf and ecg is not None:  # the sender draws the PDF from it
                result.tracing = pack_tracing(ecg)
            oru = Outbound(
                control_id=new_control_id(),
                priority=OUTBOUND_PRIORITY.get(outcome.category, DEFAULT_OUTBOUND_PRIORITY),
                max_attempts=out_cfg.max_attempts,
                destination=f"{out_cfg.host}:{out_cfg.port}" if out_cfg.host else None,
            )
        detail = {"category": outcome.category, "quality_ok": outcome.quality.ok,
                  "model_id": outcome.model_id, "placeholder": outcome.placeholder}
        if not queue.finish_job(session, item.job, result, oru, detail):
            return False
        outbound_id = oru.id if oru is not None else None
        log.info("ecg_triaged", job_id=item.job.id, message_id=item.job.ref_id, ecg_uid=item.ecg_uid,
                 result_id=result.id, category=outcome.category, outbound_id=outbound_id)
        return True

    @staticmethod
    def _all_model_failures(items: list[_Item]) -> bool:
        return all(i.error and i.error.startswith("model failed") for i in items if i.outcome is None)

    def _model_selftest(self) -> bool:
        """Can the model still run at all? (Else the batch was poison, not the model.)"""
        assert self._triager is not None
        model = self._triager.model
        try:
            model.predict(np.zeros((1, len(model.contract.leads), model.contract.length), np.float32))
        except Exception:  # noqa: BLE001 - any failure here means the model is unusable
            return False
        return True

    def _drop_model(self, reason: str) -> None:
        """A model that fails on everything is unusable: reload it (unhealthy meanwhile)."""
        self._triager = None
        self._model_error = reason
        self._next_load = time.monotonic() + self._model_retry_s
        log.error("model_dropped", reason=reason)
