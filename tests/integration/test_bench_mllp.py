"""bench/mllp.py stays runnable: its --smoke mode over real sockets and a real SQLite file."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO


def test_bench_mllp_smoke() -> None:
    out = subprocess.run([sys.executable, "bench/mllp.py", "--smoke"], cwd=REPO, capture_output=True,
                         text=True, timeout=240, check=True).stdout
    assert "python-hl7 | 150 KB" in out and "ours       | 150 KB" in out
    assert "ours / python-hl7 rate" in out and "decode 150 KB ORU" in out
