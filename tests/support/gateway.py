"""The one daemon harness: ``ecg-gateway serve`` as a real subprocess, for tests and bench.

:class:`GatewayProcess` keeps the JSON log lines in memory (tests assert on them);
:class:`Serve` writes them to a file that bench parses afterwards (the log timestamps are its
stage clock, and no reader thread competes with the load it drives). Both start the same
command with the same environment and learn the bound ports from ``gateway_started``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.logtail import read_log
from tests.support.paths import REPO

ALL_CATEGORIES = ["acute", "subacute", "abnormal_not_acute", "normal", "uninterpretable"]
TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "dicom": {"port": 0, "acse_timeout_s": 5},
    "hl7": {"port": 0},
    "http": {"port": 0},
    "logging": {"json_output": True},
    "security": {"allow_root": True},  # tests and CI run as root in containers
}
# bench's carts open many associations at once, and its stage clock reads the INFO log lines
BENCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "dicom": {"port": 0, "max_associations": 64, "max_connections_per_ip": 64},
    "hl7": {"port": 0},
    "http": {"port": 0},
    "logging": {"json_output": True, "level": "INFO"},
}


def write_config(path: Path, db_url: str, defaults: dict[str, dict[str, Any]] | None = None,
                 **sections: dict[str, Any]) -> Path:
    """A YAML config on ``db_url`` with ports 0; ``sections`` update ``defaults`` key by key."""
    config: dict[str, Any] = {"database": {"url": db_url}}
    for name, values in (TEST_DEFAULTS if defaults is None else defaults).items():
        config[name] = dict(values)
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


#: Every daemon started in this process, so a test that skips or fails before its own cleanup
#: cannot leave one serving (and draining queues in) the shared test database.
_STARTED: list[subprocess.Popen[Any]] = []


def _serve(config_path: Path, args: tuple[str, ...], env: dict[str, str] | None, stdout: Any,
           wrapper: list[str] | None = None, base_env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    full_env = {**(base_env or {}), **os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [*(wrapper or []), sys.executable, "-m", "ecg_gateway", "serve", "--config", str(config_path), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=stdout, stderr=subprocess.STDOUT,
                            text=stdout is subprocess.PIPE)
    _STARTED.append(proc)
    return proc


def running_daemons() -> set[int]:
    """Process ids of the daemons started here that still run."""
    _STARTED[:] = [proc for proc in _STARTED if proc.poll() is None]
    return {proc.pid for proc in _STARTED}


def reap_daemons(keep: set[int]) -> list[int]:
    """Kill the daemons still running except ``keep``; their process ids."""
    reaped = [proc for proc in _STARTED if proc.poll() is None and proc.pid not in keep]
    for proc in reaped:
        proc.kill()
        proc.wait(10)
    return [proc.pid for proc in reaped]


class GatewayProcess:
    """A running daemon; ``ports`` come from its ``gateway_started`` log line."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = _serve(config_path, args, env, subprocess.PIPE)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ports: dict[str, int] = {}

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def wait_started(self, timeout: float = 60) -> GatewayProcess:
        started = self.wait_for_event("gateway_started", timeout)
        self.ports = started["ports"]
        return self

    def wait_for_event(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    raise RuntimeError(
                        f"gateway exited {self.proc.returncode}:\n{''.join(self.lines)[-4000:]}") from None
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return record
        raise TimeoutError(f"no {event!r} within {timeout}s:\n{''.join(self.lines)[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def output(self) -> str:
        return "".join(self.lines)


class Serve:
    """``ecg-gateway serve`` in a subprocess; stdout (JSON logs) goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, *args: str, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        # as deployed (deploy/ecg-gateway.service, deploy/Dockerfile); the environment may override
        self.proc = _serve(config, args, env, self._log, wrapper, base_env={"MALLOC_ARENA_MAX": "2"})
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, event: str, timeout: float = 90) -> dict[str, Any]:
        """The first ``event`` in the whole log, however long ago it was written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in read_log(self.log_path):
                if record.get("event") == event:
                    return record
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"no {event!r} in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def started(self, model: bool = True) -> Serve:
        self.ports = self.wait_for("gateway_started")["ports"]
        if model:
            self.wait_for("worker_model_ready")
        return self

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name (labels dropped: summed)."""
        url = f"http://127.0.0.1:{self.ports['http']}/metrics"
        out: dict[str, float] = {}
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    key = name.split("{", 1)[0]
                    out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecg_gateway", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
