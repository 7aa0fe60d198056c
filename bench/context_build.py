"""Context building cost per tick: does it stay flat as a run grows, under each context policy?

`ContextBuilder.build` is driven directly, as the kernel drives it: build the tick's context, then append the
tick's history entry (observation 200-1,800 characters, action ~200, both unique per tick so each tick brings
one uncached entry) and carry `goal_in_history`. Measured over SAMPLE consecutive ticks starting at ticks 10,
1,000 and 10,000, in `--repeats` whole runs whose samples are pooled: median and p95 build time, tokenizer
calls per build (the builder caches counts by content: calls must not grow with the run either), history
entries in the context and its tokens.

Bounded policies (pinned, window, masked) build at every tick, since eviction happens inside `build`. Under
`unbounded` nothing is evicted, so between measuring points the history is appended without building: the
state at each measured tick is the same, and 10,000 builds of O(n) work are skipped.

Ratio = median build time at tick 10,000 (and 1,000) / at tick 10. Goal: <= RATIO_GOAL for bounded policies;
`unbounded` is expected to grow. The tokenizer is the scripted oracle's 4-characters-per-token estimate,
wrapped to count calls: with a real tokenizer each call costs more, which the call count shows.

Usage: python bench/context_build.py [--out bench/results/context_build.json] [--budget 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bloodwork.context.builder import ContextBuilder, ContextConfig, HistoryEntry
from bloodwork.isa import ISA_PROMPT
from bloodwork.oracles.base import CharEstimate

POINTS = (10, 1_000, 10_000)
SAMPLE = 50
RATIO_GOAL = 1.5
POLICIES = ("pinned", "window", "masked", "unbounded")
GOAL = "Implement the Python package ledger/ as SPEC.md describes; halt when every module is done."


@dataclass
class CountingTokenizer:
    exact: bool = False
    calls: int = 0

    def __post_init__(self) -> None:
        self._inner = CharEstimate()

    def count(self, text: str) -> int:
        self.calls += 1
        return self._inner.count(text)


def entry(tick: int, rng: random.Random) -> HistoryEntry:
    lines = "".join(f"{tick}:{i} {'x' * rng.randint(20, 70)}\n" for i in range(rng.randint(4, 25)))
    action = json.dumps({"thought": f"tick {tick}: read the next file", "q_next": f"at {tick}; next part",
                         "op": {"name": "SYS_READ", "path": f"ledger/f{tick % 50}.py"}})
    return HistoryEntry(tick=tick, observation=f"SLICE at d=ledger/f{tick % 50}.py:\n{lines}", action=action)


Sample = tuple[float, int, int, int]  # build µs, tokenizer calls, history entries shown, context tokens


def measure(policy: str, budget: int) -> dict[int, list[Sample]]:
    tok = CountingTokenizer()
    builder = ContextBuilder(ContextConfig(policy=policy, budget_tokens=budget, window=8), tok, ISA_PROMPT, GOAL)
    rng = random.Random(0)
    history: list[HistoryEntry] = []
    goal_in = True
    point_of = {t: p for p in POINTS for t in range(p, p + SAMPLE)}
    samples: dict[int, list[Sample]] = {p: [] for p in POINTS}
    for tick in range(POINTS[-1] + SAMPLE):
        if tick in point_of or policy != "unbounded":
            before = tok.calls
            t0 = time.perf_counter_ns()
            ctx, goal_in = builder.build(history, f"q at {tick}", "ledger/f0.py", "slice text\n" * 10, goal_in, tick)
            elapsed_us = (time.perf_counter_ns() - t0) / 1000
            if tick in point_of:
                samples[point_of[tick]].append((elapsed_us, tok.calls - before, len(history), ctx.total_tokens))
        history.append(entry(tick, rng))
    return samples


def summarise(policy: str, samples: dict[int, list[Sample]]) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    for point, got in samples.items():
        times = sorted(s[0] for s in got)
        rows.append({"policy": policy, "tick": point, "sample_ticks": len(got),
                     "median_us": round(statistics.median(times), 2),
                     "p95_us": round(times[int(0.95 * len(times)) - 1], 2),
                     "tokenizer_calls_median": statistics.median(s[1] for s in got),
                     "history_entries_median": statistics.median(s[2] for s in got),
                     "context_tokens_median": statistics.median(s[3] for s in got)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/context_build.json")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="whole runs per policy; their samples are pooled")
    args = parser.parse_args()
    rows, ratios = [], {}
    for policy in POLICIES:
        pooled: dict[int, list[Sample]] = {p: [] for p in POINTS}
        for _ in range(args.repeats):
            for point, got_here in measure(policy, args.budget).items():
                pooled[point] += got_here
        got = summarise(policy, pooled)
        rows += got
        base = float(got[0]["median_us"])
        ratios[policy] = {f"{r['tick']}/{POINTS[0]}": round(float(r["median_us"]) / base, 3) for r in got[1:]}
        for r in got:
            print(f"{policy:9} tick {r['tick']:6}: median {r['median_us']:9.1f} us (p95 {r['p95_us']:9.1f}), "
                  f"{r['tokenizer_calls_median']:g} tokenizer calls, {r['history_entries_median']:g} entries, "
                  f"{r['context_tokens_median']:g} tokens", flush=True)
        print(f"{policy:9} ratios: {ratios[policy]}", flush=True)
    bounded_ok = {p: all(v <= RATIO_GOAL for v in ratios[p].values()) for p in POLICIES if p != "unbounded"}
    report = {"benchmark": "context_build", "budget_tokens": args.budget, "points": list(POINTS), "sample": SAMPLE,
              "repeats": args.repeats,
              "goal": {"ratio_bounded_max": RATIO_GOAL}, "tokenizer": "4 chars/token estimate, calls counted",
              "rows": rows, "ratios": ratios, "bounded_within_goal": bounded_ok,
              "note": "build() alone, in-process; one shared, noisy machine: compare within a run"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"bounded policies within the ratio goal ({RATIO_GOAL}): {bounded_ok}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
