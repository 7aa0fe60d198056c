"""Harness cost per tick, without the model: is the kernel cheap, and does its cost stay flat with run length?

Two modes, each at 100 / 1,000 / 10,000 ticks with an instant in-process oracle:
  (a) read   — each tick reads a file (no command);
  (b) exec   — each tick runs `echo x` in the run's sandbox (bwrap where installed).
Per configuration (each in a fresh subprocess, so peak RSS is its own): median harness time per tick
(tick wall time minus the oracle call), the ratio of the last 1,000 ticks' median to the first 1,000's
(first/last tenth below 2,000 ticks), peak RSS, and bytes written per tick to the run's files (append-only
files at their final size, plus every rewrite of the registers file). The watchdog and thrashing detectors
are set out of reach here: the benchmark's agent repeats itself by design and must not die of it.

With `--baseline-src DIR` (another checkout's `src`, e.g. of main before a change) each configuration runs
with that code and with this one back to back, alternating `--repeats` times, so a shared machine's load
drifts over both alike; the report gives each side's median of the per-run medians and the difference.

Usage: python bench/tick_overhead.py [--ticks 100,1000,10000] [--out bench/results/tick_overhead.json]
       python bench/tick_overhead.py --baseline-src /work/baseline/src --ticks 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"read_ms": 1.0, "exec_ms": 3.0, "ratio": 1.15, "bytes_per_tick": 4096}


class InstantOracle:
    """A fake model that answers at once (named as a fake: it stands in for the model being timed out)."""

    spec = "bench:instant"
    provenance = "scripted"

    def __init__(self, mode: str) -> None:
        from bloodwork.oracles.base import CharEstimate

        self.mode = mode
        self.tokenizer = CharEstimate()

    def complete(self, messages, schema=None, *, call=None):
        from bloodwork.oracles.base import Completion

        tick = call.tick if call else 0
        if self.mode == "read":
            op = {"name": "SYS_READ", "path": f"data/f{tick % 50}.txt"}
        else:
            op = {"name": "SYS_EXEC", "cmd": "echo x"}
        text = json.dumps({"thought": f"tick {tick}", "q_next": f"at tick {tick}", "op": op})
        return Completion(text=text, latency_ms=0.0)

    def describe(self):
        return {"backend": "bench-instant-fake"}

    def close(self):
        return None


def one(mode: str, ticks: int) -> dict[str, float | int | str]:
    from bloodwork.chaos.plan import ChaosProfile
    from bloodwork.kernel import Kernel, KernelConfig
    from bloodwork.tasks.folder import FolderTask

    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        root = Path(tmp)
        task_dir = root / "task"
        (task_dir / "files" / "data").mkdir(parents=True)
        for i in range(50):
            (task_dir / "files" / "data" / f"f{i}.txt").write_text(f"file {i}\n" + "line of text\n" * 20)
        (task_dir / "task.yaml").write_text("id: bench/flat\nsynthetic: true\ngoal: Read files forever.\n"
                                            "verifier: {command: 'true', timeout_s: 10}\n")
        cfg = KernelConfig.model_validate({"max_ticks": ticks, "panic_budget": 3,
                                           "traps": {"watchdog_repeats": 10**6, "thrash_idle_ticks": 10**6,
                                                     "thrash_oscillation": False}})
        kernel = Kernel.create(FolderTask(task_dir), InstantOracle(mode), out_dir=root / "runs", config=cfg, seed=0,
                               chaos=ChaosProfile(), run_id="bench")
        harness: list[float] = []
        kernel.on_tick = lambda info: harness.append(info["harness_s"])
        reg_bytes = 0
        original = kernel._persist

        def persist_and_count() -> None:
            nonlocal reg_bytes
            original()
            reg_bytes += kernel.paths.registers.stat().st_size

        kernel._persist = persist_and_count  # type: ignore[method-assign]
        start = time.perf_counter()
        result = kernel.run()
        wall = time.perf_counter() - start
        run_dir = kernel.paths.root
        appended = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file() and "workspace" not in p.parts
                       and p.name not in ("registers.json", "run.json"))
        window = 1000 if ticks >= 2000 else max(1, ticks // 10)
        first = statistics.median(harness[:window])
        last = statistics.median(harness[-window:])
        return {"mode": mode, "ticks": ticks, "status": result.status.value, "sandbox": kernel.runner.kind,
                "median_ms": round(statistics.median(harness) * 1000, 4),
                "p95_ms": round(sorted(harness)[int(len(harness) * 0.95) - 1] * 1000, 4),
                "ratio_last_first": round(last / first, 3), "ratio_window_ticks": window,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "bytes_per_tick": round((appended + reg_bytes) / ticks, 1),
                "registers_bytes_per_tick": round(reg_bytes / ticks, 1), "wall_s": round(wall, 2)}


def _one(mode: str, ticks: int, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--one", mode, str(ticks)], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", default="100,1000,10000")
    parser.add_argument("--out", default="bench/results/tick_overhead.json")
    parser.add_argument("--baseline-src", type=Path, help="compare with this src folder, back to back")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side and configuration")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "TICKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    own = Path(__file__).resolve().parents[1] / "src"
    sides = {"this": own} if args.baseline_src is None else {"baseline": args.baseline_src.resolve(), "this": own}
    rows = []
    compare = []
    for mode in ("read", "exec"):
        for ticks in (int(t) for t in args.ticks.split(",")):
            got: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.repeats):
                for side, src in sides.items():
                    row = _one(mode, ticks, src) | {"side": side, "src": str(src)}
                    got[side].append(row)
                    rows.append(row)
                    print(f"{side:8} {mode:5} {ticks:6} ticks: median {row['median_ms']:.3f} ms/tick (p95 "
                          f"{row['p95_ms']:.3f}), last/first {row['ratio_last_first']:.3f}, peak RSS "
                          f"{row['peak_rss_mb']} MB, {row['bytes_per_tick']:.0f} B/tick written, sandbox "
                          f"{row['sandbox']}", flush=True)
            if len(sides) == 2:
                med = {side: statistics.median(r["median_ms"] for r in got[side]) for side in sides}
                compare.append({"mode": mode, "ticks": ticks, "repeats": args.repeats,
                                "baseline_ms": med["baseline"], "this_ms": med["this"],
                                "delta_ms": round(med["this"] - med["baseline"], 4)})
                print(f"         {mode:5} {ticks:6} ticks: baseline {med['baseline']:.3f} ms, this {med['this']:.3f} "
                      f"ms, delta {med['this'] - med['baseline']:+.3f} ms/tick", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "tick_overhead", "goals": GOALS, "rows": rows, "compare": compare,
              "note": "harness time excludes the oracle call; one machine, shared and noisy: compare within a run"}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
