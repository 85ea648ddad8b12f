"""The Gateway: builds the components from Config and starts/stops them in a fixed order.

Start: database (migrate/check) -> sender -> worker (it nudges the sender) -> receivers
(DICOM, HL7) -> ops -> housekeeping. Each optional component is an attribute that is None
until started, so stop knows what to stop without guessing.
Stop (first SIGTERM/SIGINT): receivers stop accepting and drain in-flight stores ->
worker finishes its batch -> sender finishes its send -> engine disposed -> exit 0, all
within one graceful timeout (:data:`DRAIN_TIMEOUT_S`). A second signal sets ``force_exit``:
the drain stops waiting and serve exits 1 (uvicorn's server.py). The signal handlers are
installed for the run only and the previous ones put back (:func:`capture_signals`).
A crash needs no cleanup: leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway import __version__
from ecg_gateway.audit import local_actor
from ecg_gateway.config import Config, redacted_dump
from ecg_gateway.config_check import check as check_config
from ecg_gateway.config_check import database_failure
from ecg_gateway.errors import (
    EX_CONFIG,
    EX_FORCED_EXIT,
    EX_OK,
    EX_UNAVAILABLE,
    ConfigError,
    StartupError,
)
from ecg_gateway.gcfreeze import freeze_heap
from ecg_gateway.security import root_refusal
from ecg_gateway.store.db import (
    at_head,
    is_sqlite,
    make_engine,
    make_session_factory,
    ping,
    upgrade_to_head,
)
from ecg_gateway.store.ingest import Ingestor

if TYPE_CHECKING:
    from ecg_gateway.housekeeping import Housekeeping
    from ecg_gateway.inbound.hl7_receiver import Hl7Receiver
    from ecg_gateway.outbound.sender import Sender
    from ecg_gateway.worker import Worker

log = structlog.get_logger(__name__)

ROLES = ("all", "ingest", "worker", "sender")
#: The one graceful timeout: the whole drain (in-flight DICOM stores, the worker's batch, the
#: sender's send) after the first signal. systemd's TimeoutStopSec must exceed it.
DRAIN_TIMEOUT_S = 15.0
_DRAIN_POLL_S = 0.05
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def open_database(config: Config) -> tuple[Engine, sessionmaker[Session]]:
    """Connect; on SQLite migrate to head, elsewhere refuse to run unless already at head."""
    url = config.database.url
    engine = make_engine(url)
    try:
        ping(engine)
        if is_sqlite(url) and config.database.auto_upgrade:
            upgrade_to_head(url)
        elif not at_head(engine):
            raise StartupError("database is not at the migration head: run `ecg-gateway db upgrade`", EX_CONFIG)
    except SQLAlchemyError as exc:
        raise StartupError(*database_failure(exc)) from exc
    return engine, make_session_factory(engine)


@contextlib.contextmanager
def capture_signals(handler: Callable[[signal.Signals], None]) -> Iterator[None]:
    """SIGINT/SIGTERM go to ``handler`` on the running loop until the block ends; then the
    previous handlers are back (uvicorn's ``capture_signals``). Unlike uvicorn the signal is
    not raised again: serve's answer to SIGTERM is a clean exit 0."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    for sig in HANDLED_SIGNALS:
        loop.add_signal_handler(sig, handler, sig)
    try:
        yield
    finally:
        for sig, old in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@dataclass
class Gateway:
    config: Config
    role: str = "all"
    nudge: threading.Event = field(default_factory=threading.Event)
    bound: dict[str, int] = field(default_factory=dict)
    #: Set by a second signal: the drain stops waiting (uvicorn's ``force_exit``).
    force_exit: bool = field(default=False, init=False)
    # Set by run() before anything starts (so before stop can run).
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    ingestor: Ingestor = field(init=False)

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._thread_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._health_sources: dict[str, Any] = {}
        self._drain_deadline = 0.0
        # The optional components: None until started (by role and config).
        self.sender: Sender | None = None
        self.worker: Worker | None = None
        self.housekeeping: Housekeeping | None = None
        self._dicom_server: Any = None
        self._hl7_server: Any = None
        self._hl7_receiver: Hl7Receiver | None = None
        self._ops_server: Any = None

    def wants(self, part: str) -> bool:
        return self.role == "all" or self.role == part

    async def run(self) -> int:
        """Serve until the first signal: 0 after the drain, 1 when a second signal cut it short."""
        self._prepare()
        with capture_signals(self._on_signal):
            try:
                await self._start()
                freeze_heap()
                log.info("gateway_started", role=self.role, ports=self.bound, process_id=os.getpid())
                self.ingestor.audit.record("app_start", actor=local_actor(), detail={
                    "version": __version__, "role": self.role, "ports": self.bound, "process_id": os.getpid()})
                await self._stopping.wait()
            finally:
                await self._stop()
        return EX_FORCED_EXIT if self.force_exit else EX_OK

    def _prepare(self) -> None:
        """What must hold before anything listens: config, privileges, database at head."""
        try:
            check_config(self.config, model=False)  # the files and driver the values name (exit 78)
        except ConfigError as exc:
            raise StartupError(str(exc), EX_CONFIG) from exc
        self._check_privileges()
        self.engine, self.sessions = open_database(self.config)
        self.ingestor = Ingestor(self.sessions, max_attempts=self.config.worker.max_attempts,
                                 on_commit=self.nudge.set, serialize=is_sqlite(self.config.database.url))
        self._audit_config()

    def exit_if_threads_linger(self, code: int) -> None:
        """End the process without interpreter finalization if the worker thread is still in a
        model call after the drain (issue #29: SIGABRT on SIGTERM during start-up under load).

        Before Python 3.14, finalization ends a daemon thread that wants the GIL back with
        ``pthread_exit``; inside a torch call the forced unwind meets a C++ ``noexcept``
        destructor (pybind11's ``gil_scoped_release``) and ``std::terminate`` aborts. Nothing
        is lost by skipping finalization: receivers are closed, the audit queue is flushed,
        and the worker's claimed jobs come back after their lease as after any crash."""
        lingering = [thread.name for thread in self._threads if thread.is_alive()]
        if not lingering:
            return
        log.warning("exit_without_finalization", threads=lingering, exit_code=code,
                    reason="still inside a model call after the drain")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _check_privileges(self) -> None:
        """Least privilege (security.py): refuse root unless the policy allows it here."""
        refusal = root_refusal(self.config)
        if refusal is not None:
            raise StartupError(refusal, EX_CONFIG)
        if os.geteuid() == 0:
            log.warning("running_as_root", allow_root=self.config.security.allow_root,
                        advice="run as an unprivileged user in production")

    def _audit_config(self) -> None:
        dumped = json.dumps(redacted_dump(self.config), sort_keys=True).encode()
        self.ingestor.audit.record("config_loaded", actor=local_actor(), detail={
            "sha256": hashlib.sha256(dumped).hexdigest(), "role": self.role,
            "tls": {"dicom": bool(self.config.dicom.tls_cert_file), "hl7": bool(self.config.hl7.tls_cert_file),
                    "outbound": self.config.outbound.tls}})

    async def _start(self) -> None:
        if self.wants("sender"):  # before the worker, which nudges it
            self._start_sender()
        if self.wants("worker"):
            self._start_worker()
        if self.wants("ingest") and self.config.dicom.enabled:
            self._start_dicom()
        if self.wants("ingest") and self.config.hl7.enabled:
            await self._start_hl7()
        if self.config.http.enabled:
            self._start_ops()
        if self.wants("worker"):  # one purge per deployment's worker; purges are idempotent
            from ecg_gateway.housekeeping import Housekeeping

            self.housekeeping = Housekeeping(self.sessions, self.config.retention)
            self.housekeeping.start()

    async def _start_hl7(self) -> None:
        from ecg_gateway.inbound.hl7_receiver import Hl7Receiver, start_hl7_listener

        try:
            self._hl7_receiver = Hl7Receiver(self.ingestor, threads=self.config.hl7.decode_threads)
            self._hl7_server = await start_hl7_listener(self._hl7_receiver, self.config.hl7)
        except OSError as exc:
            raise StartupError(f"cannot bind HL7 port {self.config.hl7.port}: {exc.strerror}",
                               EX_UNAVAILABLE) from exc
        self.bound["hl7"] = self._hl7_server.sockets[0].getsockname()[1]

    def _start_worker(self) -> None:
        from ecg_gateway.inbound.decode import decode_message
        from ecg_gateway.triage.model import cpu_threads
        from ecg_gateway.worker import Worker

        # process-wide torch threads are set by the model load; only the worker runs torch here
        threads = cpu_threads(self.config.model.cpu_threads, shares_process=self.role == "all")
        log.info("worker_cpu_threads", threads=threads, role=self.role)

        worker = Worker(self.sessions, self.config, decode_message, nudge=self.nudge,
                        on_results=self.sender.nudge if self.sender is not None else None, cpu_cores=threads)
        self.worker = worker
        thread = threading.Thread(target=worker.run, args=(self._thread_stop,), name="triage-worker", daemon=True)
        thread.start()
        self._threads.append(thread)
        self._health_sources["worker"] = lambda: {
            "model": {"ok": worker.healthy, **worker.health_detail},
            "worker_heartbeat": {"ok": time.time() - worker.heartbeat
                                       < max(30.0, 3 * self.config.worker.poll_interval_s),
                                 "age_s": round(time.time() - worker.heartbeat, 1)},
        }

    def _start_sender(self) -> None:
        if not self.config.outbound.host:
            log.warning("delivery_disabled",
                        reason="no outbound.host configured: results are kept, nothing is delivered")
            return
        from ecg_gateway.outbound.sender import Sender

        sender = self.sender = Sender(self.sessions, self.config)
        self._tasks.append(asyncio.create_task(sender.run(self._stopping), name="oru-sender"))

    def _start_ops(self) -> None:
        from ecg_gateway.metrics import REGISTRY
        from ecg_gateway.ops import QueueCollector, ops_app, start_ops_server
        from ecg_gateway.web import admin_routes

        REGISTRY.register(QueueCollector(self.sessions))
        http = self.config.http
        routes = admin_routes(self.sessions, http.admin_token, self.health)
        hosts = [*http.allowed_hosts, *([http.host] if http.host not in ("", "0.0.0.0", "::") else [])]
        try:
            self._ops_server = start_ops_server(
                http.host, http.port, ops_app(self.health, extra_routes=routes, allowed_hosts=hosts),
                timeout_s=http.request_timeout_s, max_threads=http.max_threads)
        except OSError as exc:
            raise StartupError(f"cannot bind HTTP port {self.config.http.port}: {exc.strerror}",
                               EX_UNAVAILABLE) from exc
        self.bound["http"] = self._ops_server.server_address[1]

    def health(self) -> dict[str, dict[str, Any]]:
        """Readiness checks, each named, for /readyz and `status`."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            ping(self.engine)
            checks["database"] = {"ok": True}
            checks["migrations"] = {"ok": at_head(self.engine)}
        except SQLAlchemyError as exc:
            checks["database"] = {"ok": False, "error": type(exc).__name__}
            checks["migrations"] = {"ok": False, "error": "database unreachable"}
        listeners = {"dicom": self._dicom_server is not None, "hl7": self._hl7_server is not None}
        expected = {"dicom": self.wants("ingest") and self.config.dicom.enabled,
                    "hl7": self.wants("ingest") and self.config.hl7.enabled}
        checks["listeners"] = {"ok": all(listeners[k] for k, want in expected.items() if want), "bound": self.bound}
        if self.wants("ingest"):
            checks["storage"] = self.ingestor.storage_check()
        for component in self._health_sources.values():
            checks.update(component())
        return checks

    def _start_dicom(self) -> None:
        from ecg_gateway.inbound.dicom_scp import accepted_sop_classes, start_dicom_server

        try:
            self._dicom_server = start_dicom_server(self.config.dicom, self.ingestor)
        except OSError as exc:
            raise StartupError(f"cannot bind DICOM port {self.config.dicom.port}: {exc.strerror}",
                               EX_UNAVAILABLE) from exc
        self.bound["dicom"] = self._dicom_server.server_address[1]
        log.info("dicom_listening", host=self.config.dicom.host, port=self.bound["dicom"],
                 ae_title=self.config.dicom.ae_title, sop_classes=list(accepted_sop_classes(self.config.dicom)))

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.warning("forced_exit", signal=sig.name)
            self.force_exit = True
            return
        log.info("shutdown_requested", signal=sig.name)
        self._stopping.set()

    async def _drain(self, done: Callable[[], bool]) -> bool:
        """Wait until ``done()``, the graceful deadline or a forced exit; True if done."""
        while not done():
            if self.force_exit or time.monotonic() >= self._drain_deadline:
                return False
            await asyncio.sleep(_DRAIN_POLL_S)
        return True

    async def _stop(self) -> None:
        self._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        if self.housekeeping is not None:
            self.housekeeping.stop()
        await self._stop_receivers()
        self._thread_stop.set()
        self.nudge.set()
        await self._drain(lambda: not any(thread.is_alive() for thread in self._threads))
        # the sender saw _stopping: let it finish the send in flight
        await self._drain(lambda: all(task.done() for task in self._tasks))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ops_server is not None:
            self._ops_server.shutdown()
        self.ingestor.audit.record("app_stop", actor=local_actor(), detail={"process_id": os.getpid()})
        await asyncio.to_thread(self.ingestor.audit.flush, 0.0 if self.force_exit else 5.0)
        self.engine.dispose()
        log.info("gateway_stopped", forced=self.force_exit)

    async def _stop_receivers(self) -> None:
        """Stop accepting; in-flight DICOM stores and HL7 messages finish (within the drain)."""
        if self._dicom_server is not None:
            server = self._dicom_server
            await asyncio.to_thread(server.shutdown)
            await self._drain(lambda: not server.active_associations)
            for assoc in list(server.active_associations):
                assoc.abort()
        if self._hl7_server is not None:
            self._hl7_server.close()
            await self._hl7_server.wait_closed()
        if self._hl7_receiver is not None:
            closing = threading.Thread(target=self._hl7_receiver.close, name="hl7-close", daemon=True)
            closing.start()
            await self._drain(lambda: not closing.is_alive())
