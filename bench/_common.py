"""Shared helpers for the benchmark scripts: percentiles, repeat statistics, tables,
machine facts, and the JSON "figure" records that ``bench/run_all`` collects.

A figure is one number we publish: ours as median (min-max) over repeats, the anchor
measured in the same run, and the ratio ours/anchor computed per repeat.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.gateway import free_port, wait_port  # noqa: F401 - bench scripts take them from here
from tests.support.stats import percentile


def summary_ms(latencies_s: Sequence[float]) -> tuple[float, float]:
    return percentile(latencies_s, 50) * 1000, percentile(latencies_s, 99) * 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def stat(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max over repeats (NaNs dropped), plus the raw values."""
    clean = [float(v) for v in values if v == v]
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0, "values": []}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean),
            "values": [round(v, 6) for v in clean]}


def fmt_num(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_stat(s: dict[str, Any] | None) -> str:
    """``12.3 (11.0–14.1)``; a single value prints alone."""
    if not s or not s.get("n"):
        return "n/a"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt_num(s["median"])
    return f"{fmt_num(s['median'])} ({fmt_num(s['min'])}–{fmt_num(s['max'])})"


def figure(fid: str, name: str, unit: str, ours: Sequence[float], *, anchor: Sequence[float] | None = None,
           anchor_name: str | None = None, higher_is_better: bool = True, goal: str | None = None,
           goal_met: bool | None = None, goal_value: float | None = None, goal_measured: float | None = None,
           command: str = "", note: str = "") -> dict[str, Any]:
    """One published figure; the ratio is ours/anchor per repeat (paired by position).

    ``goal_value`` is the goal's threshold and ``goal_measured`` what is compared with it (default:
    ours, median), so a results file can say by how much a goal is missed."""
    record: dict[str, Any] = {"id": fid, "name": name, "unit": unit, "ours": stat(ours),
                              "higher_is_better": higher_is_better, "command": command}
    if anchor is not None:
        record["anchor"] = {"name": anchor_name, **stat(anchor)}
        ratios = [o / a for o, a in zip(ours, anchor, strict=False) if a and a == a and o == o]
        record["ratio"] = stat(ratios)
    if goal:
        measured = goal_measured if goal_measured is not None else record["ours"]["median"]
        record["goal"] = {"text": goal, "met": goal_met, "value": goal_value, "measured": measured}
    if note:
        record["note"] = note
    return record


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def cpu_model() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def machine_info(torch_threads: bool = False) -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                            "load_avg": [round(x, 2) for x in load_average()],
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if torch_threads:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def machine_facts() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}"


def write_report(path: Path | None, bench: str, figures: list[dict[str, Any]], *, smoke: bool,
                 tables: dict[str, str] | None = None, notes: Sequence[str] = (), **extra: Any) -> None:
    """The JSON a bench script hands to run_all (``--json PATH``)."""
    if path is None:
        return
    report = {"bench": bench, "smoke": smoke, "machine": machine_info(), "figures": figures,
              "tables": dict(tables or {}), "notes": list(notes), **extra}
    path.write_text(json.dumps(report, indent=2, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table in Markdown (for the results file)."""
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)
