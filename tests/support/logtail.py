"""Reading the daemon's JSON-lines log, and its CPU time and memory from /proc."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as fh:
        for line in fh:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


class LogTail:
    """Reads a growing JSON-lines log incrementally; keeps every record seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = ""
        self.counts: dict[str, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        with open(self.path) as fh:
            fh.seek(self._offset)
            data = fh.read()
            self._offset = fh.tell()
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                new.append(record)
                event = record.get("event", "")
                self.counts[event] = self.counts.get(event, 0) + 1
        self.records.extend(new)
        return new

    def wait_count(self, event: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self.counts.get(event, 0) >= count:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"]).timestamp()


def rss_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of one process, MB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mb": out.get("VmRSS", float("nan")), "peak_mb": out.get("VmHWM", float("nan"))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
