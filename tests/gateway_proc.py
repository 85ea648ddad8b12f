"""Run ``ecg-gateway serve`` as a real subprocess and learn its bound ports from its logs."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, db_url: str, **sections: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "database": {"url": db_url},
        "dicom": {"port": 0, "acse_timeout_s": 5},
        "hl7": {"port": 0},
        "http": {"port": 0},
        "logging": {"json_output": True},
        "security": {"allow_root": True},  # tests and CI run as root in containers
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


class GatewayProcess:
    """A running daemon; ``ports`` come from its ``gateway_started`` log line."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecg_gateway", "serve", "--config", str(config_path), *args],
            cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
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


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecg_gateway", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
