"""`make demo`: the product's main job in small, on the embedded model.

A sweep of SmolLM2-135M (plain, and constrained to the ISA's JSON Schema) on the long-haul task under
the `default` and `heavy` chaos profiles, then `extract`: death bundles, the thrashing journal and the
sweep report, plus a per-run summary. Each demo writes a new directory under runs/demo/; nothing earlier
is overwritten. About 6 minutes on a 2-core machine (the first run also converts the model: ~25 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bloodwork.campaign.html import render_sweep
from bloodwork.chronos.journal import read_events
from bloodwork.chronos.records import RecoveryEvent, TrapEvent, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths, verify_run
from bloodwork.cli import app
from bloodwork.evidence.extract import answered_tick_calls, call_times, violation_rates
from bloodwork.evidence.stats import Distribution, percentile

# Piped into a log, rich would assume 80 columns and fold the run table into one-letter columns.
console = Console(width=None if sys.stdout.isatty() else 220)
COLUMNS = ("run", "status", "ticks", "panics", "traps", "strict viol.", "lenient viol.",
           "model ms p50/p95 (+ queued p50)", "MTTR p50 ticks", "journal")


def summarize(run_dir: Path) -> dict[str, Any]:
    """The numbers a user asks first about one run, all counted from its files."""
    paths = RunPaths(run_dir)
    manifest = RunManifest.load(paths)
    events = read_events(paths.journal)
    calls = answered_tick_calls(run_dir)
    times = call_times(calls)
    strict, lenient, _ = violation_rates(calls)
    mttr = [e.data.mttr_ticks for e in of_kind(events, RecoveryEvent)]
    traps = Counter(f"{e.data.kind}{'*' if e.data.injected else ''}" for e in of_kind(events, TrapEvent))
    return {"run": manifest.run_id, "status": manifest.status.value, "ticks": manifest.ticks,
            "cause": manifest.cause_of_death or "", "panics": sum(1 for e in events if e.kind == "panic"),
            "traps": ", ".join(f"{k} {v}" for k, v in traps.most_common()),
            "strict": strict, "lenient": lenient,
            "model_ms": times.model_ms, "queued_ms": times.queued_ms,
            "mttr": percentile(mttr, 50), "verified": verify_run(paths).ok}


def _ms(model: Distribution, queued: Distribution) -> str:
    """Whole milliseconds: the model's own time, then the wait for the model the two workers share."""
    if model.n == 0:
        return "no real calls"
    return f"{model.p50:.0f} / {model.p95:.0f} (+{queued.p50:.0f}) n={model.n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default="local:smollm2,local:smollm2+constrained")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    sweep_dir, evidence = args.out, args.out / "evidence"
    console.rule("bloodwork demo: a chaos sweep of the embedded model on the long-haul task")
    common = {"standalone_mode": False}
    app(["sweep", "--tasks", "long-haul/ledger", "--models", args.models, "--chaos", "default,heavy",
         "--seeds", args.seeds, "--ticks", str(args.ticks), "--workers", "2", "--out", str(sweep_dir),
         "--max-new-tokens", str(args.max_new_tokens)], **common)
    rows = []
    for run in sorted((sweep_dir / "runs").iterdir()):
        s = summarize(run)
        rows.append(dict(zip(COLUMNS, (
            str(s["run"]), f"{s['status']} {s['cause']}".strip(), str(s["ticks"]), str(s["panics"]), str(s["traps"]),
            str(s["strict"]), str(s["lenient"]), _ms(s["model_ms"], s["queued_ms"]), str(s["mttr"]),
            "verified" if s["verified"] else "BROKEN"), strict=True)))
    table = Table(title="runs (traps marked * were injected by chaos)", show_lines=True)
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    app(["extract", str(sweep_dir), "--out", str(evidence)], **common)
    page = sweep_dir / "sweep.html"
    page.write_text(render_sweep(sweep_dir, evidence, rows, f"bloodwork demo: {sweep_dir}"))
    console.print(f"\nruns:              {sweep_dir / 'runs'}\nreplay a death:    bloodwork replay "
                  f"{evidence / 'deaths'}/<run_id>\ntimeline of a run: bloodwork show {sweep_dir / 'runs'}/<run_id>\n"
                  f"report page:       {page} (one file, no network)")


if __name__ == "__main__":
    main()
