"""Headless Chromium for page tests: the DOM after parsing, and a PNG screenshot.

Debian: ``apt-get install -y chromium chromium-driver`` (.ci/run does it). Tests that need
it skip with that hint when no Chromium is installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

BINARY = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars")


def require_chromium() -> str:
    if BINARY is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium chromium-driver)")
    return BINARY


def dump_dom(url: str) -> str:
    done = subprocess.run([require_chromium(), *_FLAGS, "--dump-dom", url], capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1400) -> tuple[int, int]:
    """Write a PNG of ``url``; returns its (width, height) read from the PNG header."""
    done = subprocess.run([require_chromium(), *_FLAGS, f"--screenshot={path}",
                           f"--window-size={width},{height}", url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and path.is_file(), done.stderr[-2000:]
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


class Dom(HTMLParser):
    """Tables by id (rows of cell texts, the header row included) and every button."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.buttons: list[dict[str, str | None]] = []
        self.ids: dict[str, str] = {}  # element id -> its text
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._open_ids: list[tuple[str, str, list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "button":
            self.buttons.append(a)
        if a.get("id"):
            self._open_ids.append((tag, a["id"] or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            _, element_id, text = self._open_ids.pop()
            self.ids[element_id] = "".join(text).strip()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, _, text in self._open_ids:
            text.append(data)
