"""The same 8-run scripted grid on the local engine and on the Ray engine, in one run: what does Ray cost?

Grid: a small folder task x one scripted policy (no model: the harness and the engine are what is timed)
x chaos {off, exec_fail=0.2} x seeds 0-3, `--ticks` ticks each, 2 at a time (the local engine's 2 worker
threads; the Ray engine's own local instance, started with 2 CPUs, one per run).

Figures:
  - wall time of each engine's sweep, and the overhead ratio ray / local: for the sweep alone, on a Ray
    instance that is up and warm (its two workers started and bloodwork imported, as on a cluster that
    already ran a sweep), and for the whole command (Ray's start, the warm-up and the stop included).
    Goal: sweep ratio <= 1.5.
  - the cost per run of shipping its directory back to the driver, read from the Ray sweep's
    `ray_attempts.jsonl`: packed bytes, pack time on the node, fetch time, and unpack + journal check +
    placement on the driver.
  - whether every Ray run matches the local engine's (same events, ticks, traps and status; journals verify).
Raw files stay under bench/results/sweep_engines/<stamp>/round<i>/{local,ray}/; every figure is read back from them
or timed around them.

Usage: python bench/sweep_engines.py [--ticks 30] [--repeat 3] [--out bench/results/sweep_engines.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GOALS = {"sweep_ratio": 1.5}
POLICY = '''
import json

def policy(call, messages):
    t = call.tick
    if t % 7 == 3:
        op = {"name": "SYS_READ", "path": "missing-%d.txt" % t}
    elif t % 4 == 1:
        op = {"name": "SYS_WRITE", "path": "notes/t%d.txt" % t, "content": "tick %d\\n" % t * 20}
    else:
        op = {"name": "SYS_EXEC", "cmd": "echo %d >> log.txt && tail -n 3 log.txt" % t}
    return json.dumps({"thought": "tick %d" % t, "q_next": "at %d" % t, "op": op})
'''


def grid_files(root: Path) -> tuple[Path, Path]:
    task = root / "task"
    (task / "files").mkdir(parents=True)
    (task / "files" / "README.md").write_text("bench workspace\n")
    (task / "task.yaml").write_text("id: bench/sweep\nsynthetic: true\ngoal: Keep a log.\n"
                                    "verifier: {command: 'test -f log.txt', timeout_s: 10, report: exit_code}\n")
    policy = root / "policy.py"
    policy.write_text(POLICY)
    return task, policy


def signature(run_dir: Path) -> tuple:
    """What must not differ between engines: the events (kind, tick, traps), the status, the workspace."""
    from bloodwork.chronos.journal import read_events, verify
    from bloodwork.chronos.run import RunManifest, RunPaths

    paths = RunPaths(run_dir)
    assert verify(paths.journal).ok, run_dir
    events = tuple((e.kind, e.tick, tuple(e.data.get("traps", ())), e.data.get("kind"))
                   for e in read_events(paths.journal))
    files = tuple(sorted((str(p.relative_to(paths.workspace)), p.read_bytes()) for p in paths.workspace.rglob("*")
                         if p.is_file()))
    return events, RunManifest.load(paths).status.value, files


def warm_up() -> None:
    """Runs in a Ray worker: what a worker's first run would pay (bloodwork's import), paid beforehand."""
    import bloodwork.sweep_ray  # noqa: F401

    time.sleep(1.0)  # overlap, so that each of the instance's workers gets one


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 4), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4)}


def one_round(root: Path, spec: Any) -> dict[str, Any]:
    """The local engine, then the Ray engine on a fresh local instance, on the same grid."""
    from bloodwork.chronos.files import read_jsonl
    from bloodwork.sweep import Sweep, cells
    from bloodwork.sweep_ray import ATTEMPTS_FILE, RaySweep

    grid = cells(spec)
    local = Sweep(spec, root / "local")
    start = time.perf_counter()
    local.run()
    local_s = time.perf_counter() - start
    local.close()

    ray_sweep = RaySweep(spec, root / "ray")
    start = time.perf_counter()
    ray_sweep.connect()
    import ray  # after connect: it imports ray with the loopback switch set

    ray.get([ray.remote(num_cpus=1)(warm_up).remote() for _ in range(spec.workers)])
    connected = time.perf_counter()
    ray_sweep.run()
    swept = time.perf_counter()
    ray_sweep.close()
    stopped = time.perf_counter()

    ends = [r for r in read_jsonl(root / "ray" / ATTEMPTS_FILE) if r["event"] == "end" and r["outcome"] == "ok"]
    assert len(ends) == len(grid), "every run should have come back in one attempt"
    same = sum(signature(root / "local" / "runs" / c.cell_id) == signature(root / "ray" / "runs" / c.cell_id)
               for c in grid)
    row = {"raw": str(root), "local_s": round(local_s, 3), "ray_sweep_s": round(swept - connected, 3),
           "ray_start_s": round(connected - start, 3), "ray_stop_s": round(stopped - swept, 3),
           "sweep_ratio": round((swept - connected) / local_s, 3), "total_ratio": round((stopped - start) / local_s, 3),
           "runs_equal": same, "shipped": ends}
    print(f"  local {local_s:.2f} s; ray {row['ray_sweep_s']:.2f} s (+ start and warm-up {row['ray_start_s']:.2f} s, "
          f"stop {row['ray_stop_s']:.2f} s): sweep {row['sweep_ratio']:.2f}x, whole {row['total_ratio']:.2f}x; "
          f"runs equal {same}/{len(grid)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (local then ray, each on its own instance)")
    parser.add_argument("--out", default="bench/results/sweep_engines.json")
    args = parser.parse_args()

    from bloodwork.sweep import SweepSpec

    stamp = Path("bench/results/sweep_engines") / time.strftime("%Y%m%d-%H%M%S")
    stamp.mkdir(parents=True)
    task, policy = grid_files(stamp)
    spec = SweepSpec(tasks=[str(task.resolve())], models=[f"scripted:{policy.resolve()}"],
                     chaos=["off", "exec_fail=0.2"], seeds=[0, 1, 2, 3], ticks=args.ticks, workers=2)
    print(f"8 runs x {args.ticks} ticks, 2 at a time, {args.repeat} rounds", flush=True)
    rounds = [one_round(stamp / f"round{i}", spec) for i in range(args.repeat)]
    ends = [r for row in rounds for r in row.pop("shipped")]
    ship = {"n": len(ends), "bytes": summary([r["ship_bytes"] for r in ends]),
            "pack_s": summary([r["pack_s"] for r in ends]), "fetch_s": summary([r["fetch_s"] for r in ends]),
            "place_s": summary([r["place_s"] for r in ends]),
            "total_s": summary([r["pack_s"] + r["fetch_s"] + r["place_s"] for r in ends]),
            "share_of_run": summary([(r["pack_s"] + r["fetch_s"] + r["place_s"]) / r["run_s"] for r in ends])}
    sweep_ratios = [row["sweep_ratio"] for row in rounds]
    total_ratios = [row["total_ratio"] for row in rounds]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    report = {
        "benchmark": "sweep_engines", "goals": GOALS, "runs": 8, "ticks": args.ticks, "parallel": 2,
        "rounds": rounds, "sweep_ratio_median": round(statistics.median(sweep_ratios), 3),
        "total_ratio_median": round(statistics.median(total_ratios), 3), "shipping_per_run": ship,
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout or 0), "loadavg_end": load,
        "note": "one shared machine; in each round the local engine ran first; the spread across rounds is the noise",
    }
    print(f"overhead ratio ray/local, median of {len(rounds)}: sweep {report['sweep_ratio_median']:.2f}x "
          f"(rounds {', '.join(f'{r:.2f}' for r in sweep_ratios)}; goal <= {GOALS['sweep_ratio']}x), "
          f"with Ray's start and stop {report['total_ratio_median']:.2f}x "
          f"(rounds {', '.join(f'{r:.2f}' for r in total_ratios)})")
    print(f"shipping a run back (n={ship['n']}): {ship['bytes']['mean'] / 1024:.1f} KiB packed "
          f"(max {ship['bytes']['max'] / 1024:.1f}), {ship['total_s']['median'] * 1000:.1f} ms median per run "
          f"(pack {ship['pack_s']['median'] * 1000:.1f}, fetch {ship['fetch_s']['median'] * 1000:.1f}, "
          f"unpack+verify+place {ship['place_s']['median'] * 1000:.1f}), "
          f"{ship['share_of_run']['median'] * 100:.2f} % of a run's time; load average {' '.join(load)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    if any(row["runs_equal"] != 8 for row in rounds):
        sys.exit(1)


if __name__ == "__main__":
    main()
