"""Crash-safety chaos run (reliability.md T1 and S1): ECGs in while ``serve`` is SIGKILLed.

The run and its invariants live in tests/support/chaos.py (tests/integration/test_crash.py
runs the T1 size with the same code); this is the command line and its report.

    python bench/chaos.py             # S1: 1000 ECGs, 100 kills, EHR faults (~15 min here)
    python bench/chaos.py --smoke     # 16 ECGs, 2 kills (~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine_facts, table  # noqa: E402
from tests.support.chaos import S1_FAULTS, Spec, failures, run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="16 ECGs, 2 kills")
    parser.add_argument("--ecgs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--no-faults", action="store_true", help="the EHR always answers AA")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    spec = Spec(ecgs=16 if args.smoke else args.ecgs, kills=2 if args.smoke else args.kills, seed=args.seed,
                faults={} if args.no_faults else dict(S1_FAULTS))
    with tempfile.TemporaryDirectory(prefix="ecg-chaos-") as tmp:
        report = run(spec, Path(tmp))
    failed = failures(report)
    print(f"\nchaos: {machine_facts()}")
    print(f"spec: {json.dumps(asdict(spec), sort_keys=True)}\n")
    keys = ["ecgs", "acked", "kills", "kills_hit", "interrupted_sends", "lost", "duplicates_after_aa",
            "resends_after_faults", "outbound", "jobs", "results", "ehr_verdicts", "cart_resends",
            "ack_latency_p50_s", "ack_latency_p99_s", "wall_s"]
    print(table(["figure", "value"], [[k, report[k]] for k in keys]))
    print("\ninvariants: " + ("all hold" if not failed else "FAILED: " + "; ".join(failed)))
    if args.json:
        args.json.write_text(json.dumps(report, sort_keys=True, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
