"""How much of what a model writes is its prompt read back, measured on the frames of real runs.

A frame copies its prompt when an op value is a key or op name of the frame itself (`"path": "path"`), or
a text value holds five consecutive words of the ISA prompt, or a worked-example phrase
(`bloodwork.prompts.prompt_copies`). Every strictly parsed frame of every run's `trace.jsonl` is scored
against the prompt of this checkout (runs recorded under another prompt are scored against this one, which
the output names by its sha256). Per model: frames, the share that copies (Wilson 95 % interval), each kind
apart, and the most copied pieces. Nothing is filtered: a run that died at tick 2 counts its two frames.

Usage: python bench/copy_rate.py RUNS_OR_SWEEPS... [--out bench/results/copy_rate.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.run import RunManifest, RunPaths
from bloodwork.evidence.extract import find_runs
from bloodwork.evidence.stats import wilson
from bloodwork.prompts import ISA_PROMPT, prompt_copies

KINDS = ("key", "words", "example")


def score(paths: list[Path]) -> dict[str, Any]:
    per_model: dict[str, dict[str, Any]] = defaultdict(lambda: {"runs": 0, "frames": 0, "copying": 0,
                                                                 **{k: 0 for k in KINDS}, "pieces": Counter()})
    for run in find_runs(paths):
        paths_ = RunPaths(run)
        cell = per_model[RunManifest.load(paths_).model]
        cell["runs"] += 1
        for rec in read_jsonl(paths_.trace):
            if not rec.get("frame"):
                continue
            found = prompt_copies(rec["frame"])
            cell["frames"] += 1
            cell["copying"] += bool(found)
            for kind in KINDS:
                cell[kind] += any(f.startswith(kind + ":") for f in found)
            cell["pieces"].update(found)
    models = {}
    for model, c in sorted(per_model.items()):
        n = c["frames"]
        models[model] = {"runs": c["runs"], "frames": n,
                         "copying": wilson(c["copying"], n).model_dump(),
                         **{kind: wilson(c[kind], n).model_dump() for kind in KINDS},
                         "top_pieces": dict(c["pieces"].most_common(10))}
    return {"benchmark": "copy_rate", "inputs": [str(p) for p in paths],
            "prompt_sha256": hashlib.sha256(ISA_PROMPT.encode()).hexdigest(), "models": models}


def _show(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return f"n/a (n={r['n']})"
    return f"{r['k']}/{r['n']} = {r['rate']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/copy_rate.json"))
    args = ap.parse_args()
    result = score(args.paths)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for model, m in result["models"].items():
        r = m["copying"]
        print(f"{model}: {m['runs']} runs, {m['frames']} frames; copying {_show(r)}; key echo "
              f"{m['key']['k']}, prompt words {m['words']['k']}, example {m['example']['k']}")
        for piece, count in m["top_pieces"].items():
            print(f"    {count:4d}  {piece}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
