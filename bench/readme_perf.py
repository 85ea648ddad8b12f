"""Rewrite the README's performance table from a ``bench/run_all`` results file.

Replaces everything between ``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in README.md
with the headline figures (result, anchor, ratio), the date and the machine, so the README
never carries a number that no run produced.

    python bench/readme_perf.py                       # newest bench/results/*.json (not smoke)
    python bench/readme_perf.py bench/results/2026-11-25.json [--readme README.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import readme_table  # noqa: E402

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


def newest_results(folder: Path) -> Path:
    found = sorted(p for p in folder.glob("*.json") if not p.stem.endswith("-smoke"))
    if not found:
        raise SystemExit(f"no results in {folder}: run bench/run_all first")
    return found[-1]


def rewrite(readme: str, table: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"README must contain {BEGIN} ... {END} once, in that order")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="a run_all JSON (default: the newest)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    args = parser.parse_args(argv)
    results = args.results or newest_results(REPO / "bench" / "results")
    summary = json.loads(results.read_text())
    text = args.readme.read_text()
    updated = rewrite(text, readme_table(summary, results.name))
    if args.check:
        return 0 if updated == text else 1
    args.readme.write_text(updated)
    print(f"{args.readme.name}: performance table from {results.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
