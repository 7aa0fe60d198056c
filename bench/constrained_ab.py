"""Constrained decoding of two checkouts on the same frozen states: what did a decoder change do to the op?

Each arm answers every state of a frozen eval set (`bloodwork matrix freeze`) with `local:smollm2+constrained`,
the state's context behind its own checkout's ISA prompt, sampled (temperature 0.7, seed = the state's index,
as sweeps sample) with the same token budget. The states go to the engine together (answers do not depend on
the batch: tests/oracles/test_engine.py). Raw answers are written to `OUT/<arm>.jsonl`, then scored from
those files alone: strict validity, op names, the length of the op's main value (path, cmd or reason; one
token per value is what the finishing mode used to leave), and the prompt-copy rate of
`bloodwork.prompts.prompt_copies` (key echo apart), each with n and a Wilson 95 % interval.

Usage:
  python bench/constrained_ab.py --eval-set E.jsonl --out runs/decoder-ab --arm old=/work/baseline/src --arm new=src
  python bench/constrained_ab.py --eval-set E.jsonl --out runs/decoder-ab --arm old= --arm new= --score-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

MODEL = "local:smollm2+constrained"


def ask(eval_set: Path, out: Path, max_new_tokens: int, temperature: float) -> None:
    """One arm, in this process: whatever `bloodwork` is first on the path answers."""
    from bloodwork import prompts
    from bloodwork.matrix.evalset import load_evalset
    from bloodwork.oracles import make_oracle

    _, states = load_evalset(eval_set)
    oracle: Any = make_oracle(MODEL, max_new_tokens=max_new_tokens, temperature=temperature)
    requests = [oracle.request([{"role": "system", "content": prompts.ISA_PROMPT}, *s.messages[1:]],
                               dataclasses.replace(oracle.sampling, seed=i)) for i, s in enumerate(states)]
    start = time.perf_counter()
    answers = oracle.engine.generate_many(requests)
    wall = time.perf_counter() - start
    with out.open("w", encoding="utf-8") as fh:
        for state, done in zip(states, answers, strict=True):
            fh.write(json.dumps({"state_id": state.state_id, "text": done.text, "tokens": done.completion_tokens,
                                 "error": done.error}, ensure_ascii=False) + "\n")
    print(f"{out}: {len(states)} states in {wall:.0f} s", flush=True)


def _main_value(op: dict[str, Any]) -> str:
    return str(op.get("path") or op.get("cmd") or op.get("reason") or "")


def score(raw: Path) -> dict[str, Any]:
    from bloodwork.evidence.stats import wilson
    from bloodwork.isa import parse
    from bloodwork.prompts import prompt_copies

    rows = [json.loads(line) for line in raw.read_text(encoding="utf-8").splitlines() if line.strip()]
    parsed = [parse(r["text"]) for r in rows if r["error"] is None]
    frames = [p.frame.model_dump(mode="json", exclude_none=True) for p in parsed if p.strict_ok and p.frame]
    copies = [prompt_copies(f) for f in frames]
    lengths = [len(_main_value(f["op"])) for f in frames]
    return {"raw": str(raw), "n": len(rows), "errors": len(rows) - len(parsed),
            "strict_valid": wilson(len(frames), len(rows)).model_dump(),
            "ops": dict(Counter(f["op"]["name"] for f in frames).most_common()),
            "op_value_chars_p50": statistics.median(lengths) if lengths else None,
            "op_value_one_token_or_less": sum(n <= 4 for n in lengths),
            "prompt_copy": wilson(sum(bool(c) for c in copies), len(frames)).model_dump(),
            "key_echo": wilson(sum(any(x.startswith("key:") for x in c) for c in copies), len(frames)).model_dump(),
            "copied": dict(Counter(x for c in copies for x in c).most_common(10)),
            "completion_tokens_p50": statistics.median(r["tokens"] for r in rows) if rows else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-set", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arm", action="append", default=[], help="NAME=SRC: a checkout's src folder ('' = this one)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--ask-one", type=Path, help=argparse.SUPPRESS)  # an arm's own subprocess
    ap.add_argument("--json", type=Path, default=Path("bench/results/constrained_ab.json"))
    args = ap.parse_args()
    if args.ask_one:
        ask(args.eval_set, args.ask_one, args.max_new_tokens, args.temperature)
        return
    arms = dict(a.split("=", 1) for a in args.arm)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, src in arms.items():
        if args.score_only:
            break
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()) if src else os.environ.get("PYTHONPATH", "")}
        subprocess.run([sys.executable, __file__, "--eval-set", str(args.eval_set), "--ask-one",
                        str(args.out / f"{name}.jsonl"), "--max-new-tokens", str(args.max_new_tokens),
                        "--temperature", str(args.temperature)], env=env, check=True)
    report = {"benchmark": "constrained_ab", "eval_set": str(args.eval_set), "model": MODEL,
              "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "arms": {name: {"src": src or "(this checkout)", **score(args.out / f"{name}.jsonl")}
                       for name, src in arms.items()}}
    for name, r in report["arms"].items():
        sv, pc, ke = r["strict_valid"], r["prompt_copy"], r["key_echo"]
        print(f"{name}: strict {sv['k']}/{sv['n']}; op value p50 {r['op_value_chars_p50']} chars "
              f"({r['op_value_one_token_or_less']} of <= 4 chars); prompt copy {pc['k']}/{pc['n']}; key echo "
              f"{ke['k']}/{ke['n']}; ops {r['ops']}")
        print(f"    copied: {r['copied']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
