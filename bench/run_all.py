"""Run every benchmark and write ``bench/results/<date>.md`` and ``.json``.

Each benchmark script runs in its own process with ``--json``; this script collects their
figures (ours as median (min–max) over repeats, the anchor measured in the same run, the
ratio), puts the machine facts at the top, lists every goal with how far it is missed, and
adds the profile of the end-to-end path at the sustainable rate (bench/e2e_profile.py, run at
90 % of the rate bench/e2e.py measured). ``bench/readme_perf.py`` then rewrites the
README's performance table from the JSON.

    bench/run_all                 # everything, ~25-30 min on the 2-core machine
    bench/run_all --smoke         # every script's --smoke mode (seconds each)
    bench/run_all --only e2e,profile --no-million --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import load_average, machine_info  # noqa: E402
from bench.report import chaos_report, render_markdown  # noqa: E402

#: The training run's GPU numbers (issue #9 item 4): not re-run here.
GPU_MEASURED = {
    "command": "python bench/inference.py --device cuda [--variant paper]",
    "device": "nvidia-h100-x1 (one H100), bf16 autocast",
    "batches": [1, 8, 32, 128],
    "rows": {"shipped 100 Hz model (ecg-triage-ptbxl100-v1)": [140, 1065, 3871, 16235],
             "paper-size 500 Hz model (random weights, --variant paper)": [120, 973, 3516, 12080]},
    "note": "measured by the training run on nvidia-h100-x1, not re-run",
}


def steps(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str], float]]:
    """(name, argv, timeout s) per benchmark, in run order."""
    smoke = ["--smoke"] if args.smoke else []
    py = sys.executable

    def js(name: str) -> list[str]:
        return ["--json", str(out / f"{name}.json")]

    plan = [
        ("ingest", [py, "bench/ingest.py", *smoke, *js("ingest")], 600),
        ("mllp", [py, "bench/mllp.py", *smoke, *js("mllp")], 600),
        ("inference-1t", [py, "bench/inference.py", "--cores", "1", *smoke, *js("inference-1t")], 300),
        ("inference", [py, "bench/inference.py", "--bf16", "--procs", "2", "--eager", *smoke, *js("inference")], 300),
        ("oru", [py, "bench/oru.py", *smoke, *js("oru")], 300),
        ("quality_gate", [py, "bench/quality_gate.py", *(smoke or ["--ptbxl", "500"])], 300),
        ("e2e", [py, "bench/e2e.py", *smoke, *js("e2e")], 900),
        ("profile", [py, "bench/e2e_profile.py", *smoke, *js("profile")], 300),  # --rate added from e2e
        ("scaling", [py, "bench/scaling.py", *smoke, *([] if args.smoke or args.no_million else ["--million"]),
                     *js("scaling")], 1200),
    ]
    chaos = REPO / "bench" / "chaos.py"
    if chaos.exists():  # the hardening branch's benchmark, when merged
        plan.append(("chaos", [py, str(chaos.relative_to(REPO)), *smoke, *_chaos_json(chaos, out)], 900))
    if args.smoke:  # one inference run exercises the script
        plan = [p for p in plan if p[0] != "inference-1t"]
    if args.only:
        wanted = set(args.only.split(","))
        plan = [p for p in plan if p[0] in wanted]
    if args.skip:
        unwanted = set(args.skip.split(","))
        plan = [p for p in plan if p[0] not in unwanted]
    return plan


def _chaos_json(chaos: Path, out: Path) -> list[str]:
    """Pass --json only if bench/chaos.py takes it (it is another helper's script)."""
    try:
        usage = subprocess.run([sys.executable, str(chaos), "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["--json", str(out / "chaos.json")] if "--json" in usage else []


def sustainable_rate(out: Path) -> float | None:
    """90 % of the PDF-on sustainable rate e2e measured: where the profile runs."""
    try:
        report = json.loads((out / "e2e.json").read_text())
    except (OSError, ValueError):
        return None
    for fig in report["figures"]:
        if fig["id"] == "e2e.pdf.sustainable" and fig["ours"]["n"]:
            return round(0.9 * fig["ours"]["median"], 1)
    return None


def run_step(name: str, argv: list[str], timeout: float, logs: Path) -> dict[str, Any]:
    started = time.time()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log_path = logs / f"{name}.log"
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    took = time.time() - started
    print(f"{name}: exit {code} in {took:.0f} s", flush=True)
    return {"name": name, "argv": [Path(a).name if a == sys.executable else a for a in argv], "exit": code,
            "seconds": round(took, 1), "log": log_path.read_text()[-20000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="each script's --smoke mode")
    parser.add_argument("--only", help="comma-separated step names")
    parser.add_argument("--skip", help="comma-separated step names to leave out")
    parser.add_argument("--no-million", action="store_true",
                        help="scaling without the 10^6-stored-ECG size (its bulk insert takes ~1-2 min)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    parser.add_argument("--name", help="file stem (default: today's date, '-smoke' for --smoke)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or (date.today().isoformat() + ("-smoke" if args.smoke else ""))
    started = time.time()
    info = machine_info(torch_threads=True)
    info["load_avg_start"] = info.pop("load_avg")
    info["others_running"] = _other_processes()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, cmd, timeout in steps(args, work):
            if name == "profile" and not args.smoke:
                rate = sustainable_rate(work)
                cmd = [*cmd, "--rate", str(rate or 5.0), "--raw", str(work / "profile-raw.txt")]
            step = run_step(name, cmd, timeout, work)
            report_path = work / f"{name}.json"
            if report_path.exists():
                step["report"] = json.loads(report_path.read_text())
                if "figures" not in step["report"]:  # bench/chaos.py: an invariants record
                    step["report"] = chaos_report(step["report"], step["exit"])
            results.append(step)
    info["load_avg_end"] = [round(x, 2) for x in load_average()]
    summary = {"date": stem, "smoke": args.smoke, "machine": info, "git": _git_revision(),
               "wall_s": round(time.time() - started), "steps": results, "gpu": GPU_MEASURED}
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(summary, indent=1, default=str))
    md_path.write_text(render_markdown(summary))
    print(f"wrote {md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path} and .json "
          f"({summary['wall_s'] / 60:.1f} min)")
    failed = [s["name"] for s in results if s["exit"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _other_processes() -> int:
    """Busy processes not started by this run (the machine is shared): a noise warning."""
    mine = os.getpid()
    busy = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "R":
            busy += 1
    return busy


if __name__ == "__main__":
    raise SystemExit(main())
