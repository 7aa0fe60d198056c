"""Benchmark of LoRA SFT on the embedded model: seconds per optimizer step, fp32 against bf16 autocast.

    .venv/bin/python bench/train_step.py [--tokens 700] [--batch 2] [--steps 3]

Prints its figures and writes bench/results/train_step.json. Rows are synthetic (the ISA prompt and a
code slice, padded to about --tokens tokens) so that only the step cost is measured; the first step
(which also warms up) is reported apart. The machine is shared: the load average before and after is
recorded next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bloodwork.data.build import write_manifest
from bloodwork.data.formats import RowMeta, SftRow, assistant, write_jsonl
from bloodwork.data.train import TrainConfig, train
from bloodwork.isa import ISA_PROMPT

RESULTS = Path(__file__).parent / "results" / "train_step.json"
ANSWER = json.dumps({"thought": "run the tests", "q_next": "fixing money.py", "op": {"name": "SYS_EXEC",
                                                                                     "cmd": "python3 -m pytest -q"}})


def dataset(root: Path, rows: int, tokens: int) -> Path:
    line = "def step(state):\n    state['n'] += 1\n    return state\n"
    body = line * max(1, (tokens - 330) // 16)  # ~330 tokens of ISA prompt; ~16 tokens per code line
    meta = RowMeta(row_id="b", pool="golden", run_id="bench", group="bench", task="bench", tick=0, provenance="bench",
                   model="", source="", split="train", prompt_sha256="", op="SYS_EXEC", traps="")
    write_jsonl(root / "train" / "sft.jsonl", [SftRow(messages=[{"role": "system", "content": ISA_PROMPT},
                                                                {"role": "user", "content": f"{i}\n{body}"},
                                                                *assistant(ANSWER)], meta=meta) for i in range(rows)])
    write_manifest(root, generator="bench", options={}, inputs=[])
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=700)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = {"tokens_per_row": args.tokens, "batch": args.batch, "steps": args.steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp) / "data", rows=args.batch * args.steps, tokens=args.tokens)
        for bf16 in (False, True):
            load_before = os.getloadavg()
            record = train(data, Path(tmp) / f"a-{bf16}", TrainConfig(kind="sft", steps=args.steps, batch=args.batch,
                                                                      max_length=4096, bf16=bf16))
            times = [record.steps[0].elapsed_s] + [b.elapsed_s - a.elapsed_s
                                                   for a, b in zip(record.steps, record.steps[1:], strict=False)]
            later = times[1:] or times
            results["runs"]["bf16" if bf16 else "fp32"] = {
                "device": record.device, "first_step_s": round(times[0], 2),
                "later_steps_s": [round(t, 2) for t in later], "mean_later_s": round(sum(later) / len(later), 2),
                "load_before": load_before, "load_after": os.getloadavg()}
            print(f"{'bf16' if bf16 else 'fp32'}: first step {times[0]:.1f} s, later {sum(later) / len(later):.1f} s "
                  f"per step (batch {args.batch} x ~{args.tokens} tokens; load {load_before[0]:.1f})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
