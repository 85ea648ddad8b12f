"""The benchmarks stay runnable: `bench/run_all --smoke` runs every script's --smoke mode once
(real daemon, sockets, SQLite, PostgreSQL when present), and the results file and the README
table are generated from what it measured. No timing is asserted here: speed is measured by
the benchmarks themselves, never in the test suite.

bench/mllp.py's smoke has its own test (test_bench_mllp.py); bench/chaos.py (the hardening
helper's) is left to its own tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

STEPS = ("ingest", "inference", "oru", "quality_gate", "e2e", "profile", "scaling")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--smoke", "--skip", "mllp,chaos", "--out", str(out),
                           "--name", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert (out / "smoke.json").exists(), proc.stdout + proc.stderr
    return json.loads((out / "smoke.json").read_text()), out


@pytest.mark.parametrize("name", STEPS)
def test_each_benchmark_smoke_runs_and_reports(smoke_run: tuple[dict[str, Any], Path], name: str) -> None:
    summary, _ = smoke_run
    step = next(s for s in summary["steps"] if s["name"] == name)
    assert step["exit"] == 0, step["log"][-3000:]
    if name == "quality_gate":
        assert "ptbxl" in step["log"] or "dicom" in step["log"]
        return
    if name == "inference":  # the per-stage breakdown of one pass, times the passes, is the net's FLOPs
        raw = step["report"]["raw"]
        stages = raw["profile"]["stages"]
        assert [st["stage"] for st in stages][:2] == ["stem", "group 1"] and all(st["ms"] > 0 for st in stages)
        per_pass = sum(st["gflop"] for st in stages) * 1e9 / raw["profile"]["batch"]
        assert per_pass * raw["passes_per_ecg"] == pytest.approx(raw["flops_per_ecg"], rel=1e-6)
    figures = step["report"]["figures"]
    assert figures, f"{name} reported no figures"
    for fig in figures:
        assert fig["ours"]["n"] >= 1 or fig["id"].startswith("e2e."), fig  # e2e: acute-only windows may be empty
        if "anchor" in fig:
            assert fig["anchor"]["name"]


def test_results_file_has_machine_facts_goals_and_every_section(smoke_run: tuple[dict[str, Any], Path]) -> None:
    summary, out = smoke_run
    text = (out / "smoke.md").read_text()
    assert f"{summary['machine']['cores']} cores" in text and "torch" in text and "Load average" in text
    for heading in ("## Goals", "## DICOM ingest", "## End to end", "## Scaling", "## GPU inference",
                    "## Top costs on the end-to-end path"):
        assert heading in text
    assert "16,235" in text  # the training run's H100 figures, quoted not re-run
    e2e = next(s for s in summary["steps"] if s["name"] == "e2e")["report"]
    assert any(f["id"] == "e2e.pdf.sustainable" for f in e2e["figures"])
    assert "sender wait" in "".join(e2e["tables"].values())  # the per-stage breakdown


def test_readme_table_is_generated_between_the_markers(smoke_run: tuple[dict[str, Any], Path],
                                                        tmp_path: Path) -> None:
    _, out = smoke_run
    readme = tmp_path / "README.md"
    original = (REPO / "README.md").read_text()
    assert original.count("<!-- perf:begin -->") == 1 and original.count("<!-- perf:end -->") == 1
    readme.write_text(original)
    cmd = [sys.executable, "bench/readme_perf.py", str(out / "smoke.json"), "--readme", str(readme)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=60)
    text = readme.read_text()
    table = text.split("<!-- perf:begin -->")[1].split("<!-- perf:end -->")[0]
    assert "bench/results/smoke.json" in table and "| figure | command | result | anchor | ratio |" in table
    assert "durable C-STORE/s" in table and "storescp" in table
    assert text.split("<!-- perf:begin -->")[0] == original.split("<!-- perf:begin -->")[0]
    assert subprocess.run([*cmd, "--check"], cwd=REPO, timeout=60).returncode == 0
