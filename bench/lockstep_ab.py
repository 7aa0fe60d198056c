"""What a change to the sandbox costs per operation, measured so that a busy machine does not drown it.

Two worker processes, one per source tree (A = before, B = after; e.g. an untouched checkout of main and
this one), each with its own sandbox on a workspace in TMPDIR, take turns in a random order: one `echo x`
through the command runner (the exec tick's sandbox part), or one workspace read + write (the file ops of
a read/write tick). Both see the same load at the same moment, so the median of the paired differences
(B - A) is the cost of the change; the 5%..95% range of the differences shows the noise.

Usage: python bench/lockstep_ab.py --a /path/to/before/src --b src [--n 2000] [--out bench/results/lockstep_ab.json]
(TMPDIR on a tmpfs, e.g. /dev/shm, keeps disk flushes of other processes out of the file-op numbers.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = '''
import sys, tempfile, time
from pathlib import Path
from bloodwork.manifold.runner import CommandRunner
from bloodwork.manifold.workspace import Workspace
ws = Path(tempfile.mkdtemp(prefix="lockstep-"))
(ws / "data.txt").write_text("line of text\\n" * 20)
runner = CommandRunner(ws)
runner.run("true", 10)
files = Workspace(ws)
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    if line.strip() == "exec":
        runner.run("echo x", 10)
    else:
        files.read_text("data.txt")
        files.write_text("out.txt", "x" * 100)
    print(f"{(time.perf_counter() - start) * 1000:.4f}", flush=True)
runner.close()
'''


def _worker(src: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": src})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _ask(proc: subprocess.Popen[str], op: str) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(op + "\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="source tree before the change (PYTHONPATH)")
    parser.add_argument("--b", required=True, help="source tree after the change (PYTHONPATH)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", default="bench/results/lockstep_ab.json")
    args = parser.parse_args()
    a, b = _worker(os.path.abspath(args.a)), _worker(os.path.abspath(args.b))
    rng = random.Random(1)
    rows = []
    for op in ("exec", "files"):
        ta: list[float] = []
        tb: list[float] = []
        for _ in range(args.n):
            pair = [(a, ta), (b, tb)]
            rng.shuffle(pair)
            for proc, out in pair:
                out.append(_ask(proc, op))
        diffs = [y - x for x, y in zip(ta, tb, strict=True)]
        q = statistics.quantiles(diffs, n=20)
        row = {"op": op, "n": args.n, "a_median_ms": round(statistics.median(ta), 4),
               "b_median_ms": round(statistics.median(tb), 4), "diff_median_ms": round(statistics.median(diffs), 4),
               "diff_p5_ms": round(q[0], 4), "diff_p95_ms": round(q[-1], 4)}
        rows.append(row)
        print(f"{op:5}: A median {row['a_median_ms']:.3f} ms, B median {row['b_median_ms']:.3f} ms, paired B-A "
              f"median {row['diff_median_ms']:+.3f} ms (5%..95% {row['diff_p5_ms']:+.3f}..{row['diff_p95_ms']:+.3f}), "
              f"n={args.n}", flush=True)
    for proc in (a, b):
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "lockstep_ab", "a": args.a, "b": args.b, "rows": rows,
                                          "load_avg": os.getloadavg()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
