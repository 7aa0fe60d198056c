"""A/B of the ISA prompt before and after issue 12, on the same frozen states of real runs.

Each state of a frozen eval set (`bloodwork matrix freeze`) is the exact context a model got in a real
run. Both arms send that context unchanged except for its system message: the OLD prompt (the text of
`bloodwork.isa.ISA_PROMPT` before issue 12, kept verbatim below) or the NEW one (`bloodwork.prompts`).
Every raw answer is appended to `OUT/raw.jsonl` as it comes (a rerun skips what is there), then scored
from that file alone:

- strict validity: the raw text is exactly one valid frame (`bloodwork.isa.parse`, nothing cleaned);
- op names of the strictly valid frames;
- copy rate: the raw text contains a template phrase verbatim. Phrases: the OLD prompt's placeholders
  and the NEW prompt's worked-example values (`prompts.TEMPLATE_PHRASES`); `any` counts both lists in
  both arms (the states' own history holds answers recorded under the old prompt, so an old phrase can be
  copied from there too), `own` only the arm's own prompt. Reported overall and for states whose context
  (outside the system message) holds no template phrase at all ("clean").
- example-op copy: the frame's op equals one of the prompt's example ops exactly.
- prompt copy (of the strictly valid frames): `prompts.prompt_copies` against the arm's own system prompt,
  i.e. an op value that is a frame key (`"path": "path"`), five consecutive prompt words in a text value, or
  a worked-example phrase; key echo apart.
Every rate has its n and a Wilson 95 % interval.

Usage:
  python bench/prompt_ab.py --eval-set runs/ab/eval.jsonl --out runs/ab/prompt-ab \
      [--models local:smollm2,local:smollm2+constrained] [--max-new-tokens 96] [--score-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bloodwork import prompts
from bloodwork.chronos.files import read_jsonl
from bloodwork.evidence.stats import wilson
from bloodwork.isa import json_schema, parse
from bloodwork.matrix.evalset import load_evalset
from bloodwork.oracles.base import CallInfo
from bloodwork.oracles.registry import make_oracle

OLD_ISA_PROMPT = """You are the transition function of a kernel. Each turn you get the goal, your state
register q, and the slice s the kernel shows you. Answer with exactly ONE JSON object and nothing else:
{"thought": "short reasoning", "q_next": "your new state register (notes for your future self)", "op": OP}
where OP is one of:
{"name": "SYS_READ", "path": "file.py"}               read a file (add "page": N for later pages)
{"name": "SYS_WRITE", "path": "file.py", "content": "..."}  write a whole file
{"name": "SYS_EDIT", "path": "file.py", "search": "old", "replace": "new"}  replace one exact occurrence
{"name": "SYS_EXEC", "cmd": "python3 -m pytest -q"}   run a shell command in the workspace
{"name": "SYS_HALT", "reason": "why the goal is met"}  claim the task is done (it will be verified)
Faults come back to you as trap slices (sys://trap/KIND): read them and recover. No prose, no code fences."""
OLD_PHRASES = ("short reasoning", "your new state register", "notes for your future self", "why the goal is met",
               '"file.py"', '"content": "..."', '"search": "old"', '"replace": "new"')
OLD_EXAMPLE_OPS = [{"name": "SYS_READ", "path": "file.py"}, {"name": "SYS_WRITE", "path": "file.py", "content": "..."},
                   {"name": "SYS_EDIT", "path": "file.py", "search": "old", "replace": "new"},
                   {"name": "SYS_EXEC", "cmd": "python3 -m pytest -q"},
                   {"name": "SYS_HALT", "reason": "why the goal is met"}]
ARMS: dict[str, dict[str, Any]] = {
    "old": {"system": OLD_ISA_PROMPT, "phrases": OLD_PHRASES, "example_ops": OLD_EXAMPLE_OPS},
    "new": {"system": prompts.ISA_PROMPT, "phrases": prompts.TEMPLATE_PHRASES,
            "example_ops": [prompts.EXAMPLE_FRAME["op"]]},
}
ALL_PHRASES = OLD_PHRASES + prompts.TEMPLATE_PHRASES


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ask(eval_set: Path, out: Path, models: list[str], max_new_tokens: int) -> None:
    _, states = load_evalset(eval_set)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw.jsonl"
    done = {(r["state_id"], r["model"], r["system_sha256"]) for r in read_jsonl(raw)} if raw.exists() else set()
    schema = json_schema()
    for model in models:
        oracle = make_oracle(model, max_new_tokens=max_new_tokens)
        for i, state in enumerate(states):
            if state.messages[0]["role"] != "system":
                raise SystemExit(f"{state.state_id}: the first message is not the system prompt")
            for arm, spec in ARMS.items():  # arms alternate per state, so load drifts hit both alike
                if (state.state_id, model, sha(spec["system"])) in done:
                    continue
                messages = [{"role": "system", "content": spec["system"]}, *state.messages[1:]]
                c = oracle.complete(messages, schema, call=CallInfo(run_id="prompt-ab", tick=state.tick,
                                                                    call_index=i))
                row = {"state_id": state.state_id, "model": model, "arm": arm, "system_sha256": sha(spec["system"]),
                       "text": c.text, "error": c.error, "latency_ms": round(c.latency_ms, 1),
                       "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                       "ts": round(time.time(), 3)}
                with raw.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                print(f"{model} {arm} {i + 1}/{len(states)} {c.latency_ms / 1000:.1f}s {c.text[:90]!r}", flush=True)
        close = getattr(oracle, "close", None)
        if close:
            close()


def _rate(k: int, n: int) -> dict[str, Any]:
    return wilson(k, n).model_dump()


def score(eval_set: Path, out: Path) -> dict[str, Any]:
    meta, states = load_evalset(eval_set)
    context = {s.state_id: "\n".join(m["content"] for m in s.messages[1:]) for s in states}
    clean = {sid for sid, text in context.items() if not any(p in text for p in ALL_PHRASES)}
    rows = read_jsonl(out / "raw.jsonl")
    cells: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows}):
        for arm, spec in ARMS.items():
            mine = [r for r in rows if (r["model"], r["arm"], r["system_sha256"]) == (model, arm, sha(spec["system"]))]
            answered = [r for r in mine if r["error"] is None]
            frames = [parse(r["text"]).frame if parse(r["text"]).strict_ok else None for r in answered]
            ops = Counter(f.op.name for f in frames if f is not None)
            own = [any(p in r["text"] for p in spec["phrases"]) for r in answered]
            anyp = [any(p in r["text"] for p in ALL_PHRASES) for r in answered]
            clean_any = [a for r, a in zip(answered, anyp, strict=True) if r["state_id"] in clean]
            example = [f is not None and f.op.model_dump(mode="json", exclude_none=True) in spec["example_ops"]
                       for f in frames]
            valid = [f.model_dump(mode="json", exclude_none=True) for f in frames if f is not None]
            copies = [prompts.prompt_copies(f, spec["system"]) for f in valid]
            by_phrase = Counter(p for r in answered for p in ALL_PHRASES if p in r["text"])
            cells[f"{model} | {arm}"] = {
                "model": model, "arm": arm, "n": len(answered), "errors": len(mine) - len(answered),
                "strict_valid": _rate(sum(f is not None for f in frames), len(answered)),
                "ops": dict(ops.most_common()),
                "copy_any": _rate(sum(anyp), len(answered)), "copy_own": _rate(sum(own), len(answered)),
                "copy_any_clean_states": _rate(sum(clean_any), len(clean_any)),
                "example_op_copy": _rate(sum(example), len(answered)),
                "prompt_copy_valid_frames": _rate(sum(bool(c) for c in copies), len(valid)),
                "key_echo_valid_frames": _rate(sum(any(x.startswith("key:") for x in c) for c in copies), len(valid)),
                "phrases_copied": dict(by_phrase.most_common()),
                "latency_ms_p50": sorted(r["latency_ms"] for r in answered)[len(answered) // 2] if answered else None}
    return {"benchmark": "prompt_ab", "eval_set": str(eval_set), "eval_set_sha256": meta.sha256,
            "states": len(states), "clean_states": len(clean), "raw": str(out / "raw.jsonl"),
            "prompts": {arm: {"sha256": sha(s["system"]), "phrases": list(s["phrases"])} for arm, s in ARMS.items()},
            "cells": cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-set", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for raw.jsonl and the summary")
    parser.add_argument("--models", default="local:smollm2,local:smollm2+constrained")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="the demo's cap")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/prompt_ab.json"))
    args = parser.parse_args()
    if not args.score_only:
        ask(args.eval_set, args.out, args.models.split(","), args.max_new_tokens)
    report = score(args.eval_set, args.out)
    print(f"eval set {report['eval_set']} ({report['states']} states, {report['clean_states']} clean)")
    fmt = "{:<36} {:>3} {:>20} {:>20} {:>20} {:>20} {:>20}"
    print(fmt.format("model | prompt", "n", "strict valid", "copy (any phrase)", "copy (own prompt)",
                     "copy (clean states)", "example-op copy"))

    def show(r: dict[str, Any]) -> str:
        if r["rate"] is None:
            return "n/a"
        lo, hi = r["ci95"]
        return f"{r['k']}/{r['n']} {100 * r['rate']:.0f}% [{100 * lo:.0f},{100 * hi:.0f}]"

    for name, c in report["cells"].items():
        print(fmt.format(name, c["n"], show(c["strict_valid"]), show(c["copy_any"]), show(c["copy_own"]),
                         show(c["copy_any_clean_states"]), show(c["example_op_copy"])))
        print(f"{'':<45}ops {c['ops']}; phrases {c['phrases_copied']}")
        print(f"{'':<45}valid frames copying the prompt {show(c['prompt_copy_valid_frames'])}, "
              f"key echo {show(c['key_echo_valid_frames'])}")
    for path in (args.json, args.out / "summary.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"wrote {args.json} and {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
