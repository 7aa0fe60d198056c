"""Where a batched tick's model time goes: one prompt's prefill against decode steps by active rows.

    .venv/bin/python bench/engine_steps.py

Wall and CPU seconds (this process, all threads) of prefilling 1655-token tick prompts (the same ones as
bench/model_engine.py, without the cached system prompt) and of the engine's fixed 8-row decode step with
1, 2, 4 and 8 sequences in it (8 steps each). Writes bench/results/engine_steps.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from model_engine import tick_messages

from bloodwork.oracles.local import make_local_oracle

RESULTS = Path(__file__).parent / "results" / "engine_steps.json"
STEPS = 8


def main() -> None:
    oracle = make_local_oracle("local:smollm2", "smollm2", max_new_tokens=8)
    forward, count = oracle.engine.forward, oracle.tokenizer.count
    prompts = [oracle.prompt_ids(tick_messages(w, 0, count)) for w in range(8)]
    out: dict[str, object] = {"loadavg_before": os.getloadavg(), "prompt_tokens": len(prompts[0]),
                              "dtype": oracle.loaded.dtype, "threads": torch.get_num_threads()}
    prefills, seqs = [], []
    with torch.inference_mode():
        for ids in prompts:
            kv = forward.new_seq(len(ids) + 2 * STEPS)
            wall, cpu = time.perf_counter(), time.process_time()
            forward.prefill(kv, ids)
            prefills.append({"wall_s": round(time.perf_counter() - wall, 3),
                             "cpu_s": round(time.process_time() - cpu, 3)})
            seqs.append(kv)
        out["prefill"] = prefills
        for active in (1, 2, 4, 8):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(STEPS):
                forward.step(seqs[:active], [42] * active)
            out[f"step_{active}_active"] = {"wall_s": round((time.perf_counter() - wall) / STEPS, 4),
                                            "cpu_s": round((time.process_time() - cpu) / STEPS, 4)}
    out["loadavg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
