"""Benchmark of the local model engine: batched decoding for sweeps, forks and serve, against one stream.

    .venv/bin/python bench/model_engine.py [--quick]

One process, one run: every ratio is against the single-stream figure measured in the same run, on the
same tick-sized prompts (~1.5k tokens: ISA system prompt, goal, a history of slices and frames).

- single_tok_s: one call alone, completion tokens over its wall time (prefill included);
- sweep4_speedup: 4 worker threads, each asking for its own ticks with a short, seeded pause between
  calls (the command a tick runs), aggregate tokens/s over single_tok_s;
- fork8_cost: wall time of 8 samples at one prompt in one batch (`complete_many`) over one call's;
- serve4_speedup: 4 concurrent OpenAI clients of `bloodwork serve` over 1 client, aggregate tokens/s;
- tick_p50_s: model time of a lone tick call (latency minus queue), p50.

And the choices behind the engine, each measured against its alternative in the same run: continuous vs
static batches (sweep4 again with `join="batch"`), the system prompt's cached prefix vs none, a fixed
8-row decode step vs a 1-row one for a lone call, bfloat16 vs float32, 2 threads vs 1. The machine is
shared: the load average before and after is recorded, and figures are medians with n.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bloodwork.isa import ISA_PROMPT
from bloodwork.oracles.base import CallInfo, Completion, Message
from bloodwork.oracles.local import LocalOracle, Sampling, make_local_oracle
from bloodwork.oracles.serve import ModelServer

RESULTS = Path(__file__).parent / "results" / "model_engine.json"
PROMPT_TOKENS = 1500
NEW_TOKENS = 96


def tick_messages(worker: int, tick: int, count: Callable[[str], int]) -> list[Message]:
    """A tick's context of about PROMPT_TOKENS tokens, different for every (worker, tick)."""
    messages: list[Message] = [{"role": "system", "content": ISA_PROMPT},
                               {"role": "user", "content": f"GOAL: make tests/test_ledger_{worker}.py pass."}]
    total, turn = count(ISA_PROMPT), 0
    while total < PROMPT_TOKENS - 150:
        code = "\n".join(f"def step_{worker}_{tick}_{turn}_{i}(state):\n    state['n'] += {i * (turn + 1)}\n"
                         f"    return state" for i in range(6))
        frame = json.dumps({"thought": f"read part {turn}", "q_next": f"w{worker} t{tick} part {turn}",
                            "op": {"name": "SYS_READ", "path": f"src/part_{turn}.py"}})
        messages += [{"role": "user", "content": f"SLICE src/part_{turn}.py\n{code}"},
                     {"role": "assistant", "content": frame}]
        total += count(code) + count(frame) + 12
        turn += 1
    messages.append({"role": "user", "content": f"REGISTER q: worker {worker}, tick {tick}\nSLICE: $ pytest -q\n"
                                                f"1 failed, {tick} passed"})
    return messages


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def rate(done: list[Completion], wall_s: float) -> float:
    return sum(c.completion_tokens or 0 for c in done) / wall_s


def _answer(oracle: LocalOracle, messages: list[Message], engine: Any = None, prefix: bool = True) -> Completion:
    """One call through the oracle's public API (so `--out` runs on the code before the engine too), or
    through a given engine, optionally without the cached system prompt."""
    sampling = Sampling(max_new_tokens=NEW_TOKENS)
    if engine is None and prefix:
        return oracle.generate(messages, sampling)
    from bloodwork.oracles.engine import Request

    request = oracle.request(messages, sampling)
    if not prefix:
        request = Request(prompt_ids=request.prompt_ids, sampling=sampling)
    return (engine or oracle.engine).generate(request)


def single(oracle: LocalOracle, prompts: list[list[Message]], engine: Any = None,
           prefix: bool = True) -> dict[str, Any]:
    """Lone calls in turn: tokens/s over wall time, and the model time per call."""
    rates, model_s, tokens = [], [], []
    for messages in prompts:
        start = time.perf_counter()
        done = _answer(oracle, messages, engine, prefix)
        rates.append(rate([done], time.perf_counter() - start))
        model_s.append((done.latency_ms - (done.queue_ms or 0)) / 1000)
        tokens.append(done.completion_tokens or 0)
    return {"tok_s": median(rates), "model_s_p50": median(model_s), "tokens": tokens, "n": len(prompts),
            "prompt_tokens": len(oracle.prompt_ids(prompts[0]))}


def sweep(oracle: LocalOracle, workers: int, ticks: int, count: Callable[[str], int], engine: Any = None
          ) -> dict[str, Any]:
    """`workers` threads each asking for `ticks` ticks, pausing 0-200 ms (seeded) between calls."""
    done: list[Completion] = []
    lock = threading.Lock()

    def work(w: int) -> None:
        pause = random.Random(w)
        for t in range(ticks):
            answer = _answer(oracle, tick_messages(w, t, count), engine)
            with lock:
                done.append(answer)
            time.sleep(pause.uniform(0, 0.2))

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    return {"workers": workers, "calls": len(done), "wall_s": round(wall, 2), "tok_s": round(rate(done, wall), 2),
            "batch_size_mean": round(statistics.mean(getattr(c, "batch_size", None) or 1 for c in done), 2)}


def fork(oracle: LocalOracle, prompt: list[Message], k: int) -> dict[str, Any]:
    hot = make_local_oracle(oracle.spec, oracle.spec.removeprefix("local:"), max_new_tokens=NEW_TOKENS,
                            temperature=0.8, top_p=0.95)
    calls = [CallInfo("bench", 0, i, purpose="fork") for i in range(k)]
    start = time.perf_counter()
    one = hot.complete(prompt, call=calls[0])
    one_s = time.perf_counter() - start
    batched = getattr(hot, "complete_many", None)  # absent before the engine: the samples one by one
    start = time.perf_counter()
    many = batched(prompt, None, calls) if batched else [hot.complete(prompt, call=c) for c in calls]
    many_s = time.perf_counter() - start
    return {"k": k, "one_s": round(one_s, 2), "one_tokens": one.completion_tokens, "batch_s": round(many_s, 2),
            "batch_tokens": [c.completion_tokens for c in many], "cost": round(many_s / one_s, 2)}


def serve(prompts: list[list[Message]], clients: int, requests: int, spec: str) -> dict[str, Any]:
    from openai import OpenAI

    with ModelServer(spec, max_new_tokens=NEW_TOKENS) as srv, \
            OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=3600) as sdk:
        def ask(i: int) -> int:
            reply = sdk.chat.completions.create(model="m", messages=prompts[i % len(prompts)],  # type: ignore[arg-type]
                                                max_tokens=NEW_TOKENS)
            return reply.usage.completion_tokens if reply.usage else 0

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            tokens = list(pool.map(ask, range(requests)))
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": requests, "wall_s": round(wall, 2), "tok_s": round(sum(tokens) / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (about a third of the time)")
    parser.add_argument("--skip-choices", action="store_true", help="only the five headline figures")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    n = 2 if args.quick else 4
    import torch
    import transformers

    load_before = os.getloadavg()
    started = time.perf_counter()
    oracle = make_local_oracle("local:smollm2", "smollm2", max_new_tokens=NEW_TOKENS)
    count = oracle.tokenizer.count
    prompts = [tick_messages(9, t, count) for t in range(n)]
    oracle.generate(prompts[0], Sampling(max_new_tokens=4))  # warm-up: first-call allocations, prefix cache
    described = oracle.describe()
    result: dict[str, Any] = {"quick": args.quick, "dtype": described["dtype"], "engine": described.get("engine"),
                              "threads": torch.get_num_threads(), "new_tokens": NEW_TOKENS}
    alone = single(oracle, prompts)
    result["single"] = alone
    result["single_tok_s"] = alone["tok_s"]
    result["tick_p50_s"] = alone["model_s_p50"]
    print(f"single stream: {alone['tok_s']} tok/s, tick model time p50 {alone['model_s_p50']} s "
          f"({alone['prompt_tokens']}-token prompt, n={n})")

    four = sweep(oracle, 4, n, count)
    result["sweep4"] = four
    result["sweep4_speedup"] = round(four["tok_s"] / alone["tok_s"], 2)
    print(f"sweep, 4 workers: {four['tok_s']} tok/s aggregate = {result['sweep4_speedup']}x (mean batch "
          f"{four['batch_size_mean']})")

    forked = fork(oracle, prompts[0], 8)
    result["fork8"] = forked
    result["fork8_cost"] = forked["cost"]
    print(f"fork, 8 samples in one batch: {forked['batch_s']} s vs one call {forked['one_s']} s = {forked['cost']}x")

    one_client = serve(prompts, 1, n, oracle.spec)
    four_clients = serve(prompts, 4, 4 * n, oracle.spec)
    result["serve"] = [one_client, four_clients]
    result["serve4_speedup"] = round(four_clients["tok_s"] / one_client["tok_s"], 2)
    print(f"serve: 1 client {one_client['tok_s']} tok/s, 4 clients {four_clients['tok_s']} tok/s "
          f"= {result['serve4_speedup']}x")

    if not args.skip_choices:
        result["choices"] = choices(oracle, prompts, count, n)
    result.update({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "wall_s": round(time.perf_counter() - started, 1),
        "engine_stats": getattr(getattr(oracle, "engine", None), "stats", None)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("single_tok_s", "sweep4_speedup", "fork8_cost", "serve4_speedup",
                                             "tick_p50_s", "loadavg_before", "loadavg_after", "wall_s")}))
    print(f"wrote {args.out}")


def choices(oracle: LocalOracle, prompts: list[list[Message]], count: Callable[[str], int], n: int) -> dict[str, Any]:
    """Each design choice against its alternative, interleaved so that a change of load hits both alike."""
    import torch

    from bloodwork.oracles.engine import Engine

    out: dict[str, Any] = {}
    static = Engine(oracle.loaded, join="batch")
    out["sweep4_static_batches"] = sweep(oracle, 4, n, count, engine=static)
    print(f"  static batches: sweep4 {out['sweep4_static_batches']['tok_s']} tok/s")
    with_prefix, without = single(oracle, prompts), single(oracle, prompts, prefix=False)
    out["prefix_reuse"] = {"with": with_prefix, "without": without,
                           "saved_s_p50": round(without["model_s_p50"] - with_prefix["model_s_p50"], 3)}
    print(f"  system prompt prefix reused: {with_prefix['model_s_p50']} s vs {without['model_s_p50']} s per tick")
    one_row = Engine(oracle.loaded, rows=1, max_batch=1)
    out["decode_rows"] = {"rows_8": single(oracle, prompts), "rows_1": single(oracle, prompts, engine=one_row)}
    print(f"  lone call, 8-row step {out['decode_rows']['rows_8']['tok_s']} tok/s vs 1-row "
          f"{out['decode_rows']['rows_1']['tok_s']} tok/s")
    fp32 = make_local_oracle("local:smollm2+float32", "smollm2+float32", max_new_tokens=NEW_TOKENS)
    out["dtype"] = {"bfloat16": single(oracle, prompts), "float32": single(fp32, prompts),
                    "float32_sweep4": sweep(fp32, 4, n, count)}
    print(f"  float32: {out['dtype']['float32']['tok_s']} tok/s alone, sweep4 "
          f"{out['dtype']['float32_sweep4']['tok_s']} tok/s")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out["threads"] = {"1": single(oracle, prompts[:1]), "1_sweep4": sweep(oracle, 4, 1, count)}
    finally:
        torch.set_num_threads(threads)
    out["threads"][str(threads)] = single(oracle, prompts[:1])
    print(f"  1 thread: {out['threads']['1']['tok_s']} tok/s alone vs {out['threads'][str(threads)]['tok_s']}")
    return out


if __name__ == "__main__":
    main()
