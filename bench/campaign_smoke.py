"""Wall time of the smoke campaign (its goal: at most 2 minutes on an idle 2-core machine).

Runs `bloodwork campaign run smoke` once into a temporary directory and prints the whole wall time, each
phase's (from the campaign's own state: steps, checks and audit together), the CPU time of the campaign and
all its commands, and the machine's load average before and after: the machine is shared, and wall time
moves with the load while CPU time moves much less.

Usage: python bench/campaign_smoke.py [--out bench/results/campaign_smoke.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/campaign_smoke.json")
    parser.add_argument("--keep", type=Path, help="campaign directory to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bw-campaign-") as tmp:
        folder = args.keep or Path(tmp) / "smoke"
        load_before = os.getloadavg()[0]
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "bloodwork.cli", "campaign", "run", "smoke", "--out",
                               str(folder)], capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        state = json.loads((folder / "campaign.json").read_text())
    report = {"benchmark": "campaign_smoke", "goal_s": GOAL_S, "wall_s": round(wall, 1), "exit": proc.returncode,
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "cores": os.cpu_count(), "gates": {p["id"]: p["gate"] for p in state["phases"]},
              "phases_s": {p["id"]: round(p["wall_s"], 1) for p in state["phases"]}}
    for pid, seconds in report["phases_s"].items():
        print(f"phase {pid}: {seconds:6.1f} s  {report['gates'][pid]}")
    print(f"total {wall:.1f} s wall (goal {GOAL_S} s), {report['cpu_s']} s CPU, exit {proc.returncode}, load average "
          f"{report['load_avg_1m']['before']} -> {report['load_avg_1m']['after']} on {report['cores']} cores")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
