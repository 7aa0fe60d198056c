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

Each ratio is given by wall time (what the goals are stated in) and by this process's CPU time, which a
shared machine's load hardly moves (see `Span`). Then the choices behind the engine, each against its
alternative in the same run (skip with --skip-choices): continuous vs static batches, the system prompt's
cached prefix vs none, the fixed 8-row decode step vs a 1-row one for a lone call, bfloat16 vs float32,
2 threads vs 1. The load average before and after is recorded. `--out` can run the headline part on the
code before the engine (PYTHONPATH=that checkout's src), for a before/after table.
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


class Span:
    """Wall seconds and this process's CPU seconds (all threads) over a block. On a shared machine the wall
    time of a job follows the load; the CPU seconds it needs hardly do, so a ratio of tokens per CPU second
    is a load-robust (and, with more rows per step using both cores better, conservative) proxy for the
    ratio an idle machine would give."""

    def __enter__(self) -> Span:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def figures(self, tokens: int) -> dict[str, float]:
        return {"tokens": tokens, "wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2),
                "tok_s": round(tokens / self.wall, 3), "tok_cpu_s": round(tokens / self.cpu, 3)}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """a over b, by wall time (what was asked) and by CPU time (robust to the shared machine's load)."""
    return {"wall": round(a["tok_s"] / b["tok_s"], 2), "cpu": round(a["tok_cpu_s"] / b["tok_cpu_s"], 2)}


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
    """Lone calls in turn: aggregate tokens/s, and the model time per call."""
    with Span() as span:
        done = [_answer(oracle, messages, engine, prefix) for messages in prompts]
    model_s = [(c.latency_ms - (c.queue_ms or 0)) / 1000 for c in done]
    return {**span.figures(sum(c.completion_tokens or 0 for c in done)), "calls": len(done),
            "model_s_p50": round(statistics.median(model_s), 3), "prompt_tokens": len(oracle.prompt_ids(prompts[0]))}


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

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    with Span() as span:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return {**span.figures(sum(c.completion_tokens or 0 for c in done)), "workers": workers, "calls": len(done),
            "batch_size_mean": round(statistics.mean(getattr(c, "batch_size", None) or 1 for c in done), 2)}


def fork(oracle: LocalOracle, prompt: list[Message], k: int) -> dict[str, Any]:
    hot = make_local_oracle(oracle.spec, oracle.spec.removeprefix("local:"), max_new_tokens=NEW_TOKENS,
                            temperature=0.8, top_p=0.95)
    calls = [CallInfo("bench", 0, i, purpose="fork") for i in range(k)]
    with Span() as one_span:
        one = hot.complete(prompt, call=calls[0])
    batched = getattr(hot, "complete_many", None)  # absent before the engine: the samples one by one
    with Span() as many_span:
        many = batched(prompt, None, calls) if batched else [hot.complete(prompt, call=c) for c in calls]
    return {"k": k, "one": one_span.figures(one.completion_tokens or 0),
            "batch": many_span.figures(sum(c.completion_tokens or 0 for c in many)),
            "cost": {"wall": round(many_span.wall / one_span.wall, 2), "cpu": round(many_span.cpu / one_span.cpu, 2)}}


def serve(prompts: list[list[Message]], clients: int, requests: int, spec: str) -> dict[str, Any]:
    from openai import OpenAI

    with ModelServer(spec, max_new_tokens=NEW_TOKENS) as srv, \
            OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=3600) as sdk:
        def ask(i: int) -> int:
            reply = sdk.chat.completions.create(model="m", messages=prompts[i % len(prompts)],  # type: ignore[arg-type]
                                                max_tokens=NEW_TOKENS)
            return reply.usage.completion_tokens if reply.usage else 0

        with Span() as span, ThreadPoolExecutor(clients) as pool:
            tokens = list(pool.map(ask, range(requests)))
    return {**span.figures(sum(tokens)), "clients": clients, "requests": requests}


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
    print(f"single stream: {alone['tok_s']} tok/s ({alone['tok_cpu_s']} per CPU s), tick model time p50 "
          f"{alone['model_s_p50']} s ({alone['prompt_tokens']}-token prompt, n={n})")

    four = sweep(oracle, 4, n, count)
    result["sweep4"] = four
    result["sweep4_speedup"] = ratio(four, alone)
    print(f"sweep, 4 workers: {four['tok_s']} tok/s aggregate = {result['sweep4_speedup']} (mean batch "
          f"{four['batch_size_mean']})")

    forked = fork(oracle, prompts[0], 8)
    result["fork8"] = forked
    result["fork8_cost"] = forked["cost"]
    print(f"fork, 8 samples: {forked['batch']['wall_s']} s vs one call {forked['one']['wall_s']} s = {forked['cost']}")

    one_client = serve(prompts, 1, n, oracle.spec)
    four_clients = serve(prompts, 4, 4 * n, oracle.spec)
    result["serve"] = [one_client, four_clients]
    result["serve4_speedup"] = ratio(four_clients, one_client)
    print(f"serve: 1 client {one_client['tok_s']} tok/s, 4 clients {four_clients['tok_s']} tok/s "
          f"= {result['serve4_speedup']}")

    if not args.skip_choices:
        result["choices"] = choices(oracle, prompts, count, n, alone)
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


def choices(oracle: LocalOracle, prompts: list[list[Message]], count: Callable[[str], int], n: int,
            alone: dict[str, Any]) -> dict[str, Any]:
    """Each design choice against its alternative in this run, as ratios by wall and by CPU time."""
    import torch

    from bloodwork.oracles.engine import Engine

    out: dict[str, Any] = {}
    static = sweep(oracle, 4, n, count, engine=Engine(oracle.loaded, join="batch"))
    out["static_batches"] = {"sweep4": static, "sweep4_speedup": ratio(static, alone)}
    print(f"  static batches instead of joining between steps: sweep4 {out['static_batches']['sweep4_speedup']}")

    with_prefix, without = single(oracle, prompts), single(oracle, prompts, prefix=False)
    out["prefix_reuse"] = {"with": with_prefix, "without": without, "speedup": ratio(with_prefix, without),
                           "saved_s_p50": round(without["model_s_p50"] - with_prefix["model_s_p50"], 3)}
    print(f"  system prompt's cached prefix: {with_prefix['model_s_p50']} s vs {without['model_s_p50']} s a tick")

    rows_8, rows_1 = single(oracle, prompts), single(oracle, prompts, engine=Engine(oracle.loaded, rows=1, max_batch=1))
    out["fixed_rows"] = {"rows_8": rows_8, "rows_1": rows_1, "cost": ratio(rows_1, rows_8)}
    print(f"  a lone call in a 1-row step is {out['fixed_rows']['cost']} times as fast as in the 8-row step")

    fp32 = make_local_oracle("local:smollm2+float32", "smollm2+float32", max_new_tokens=NEW_TOKENS)
    fp32_alone, bf16_alone = single(fp32, prompts), single(oracle, prompts)
    fp32_four = sweep(fp32, 4, n, count)
    out["precision"] = {"float32": fp32_alone, "bfloat16": bf16_alone,
                        "bfloat16_speedup": ratio(bf16_alone, fp32_alone), "float32_sweep4": fp32_four,
                        "float32_sweep4_speedup": ratio(fp32_four, fp32_alone)}
    print(f"  bfloat16 over float32, lone call: {out['precision']['bfloat16_speedup']}; float32 sweep4 "
          f"{out['precision']['float32_sweep4_speedup']}")

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = single(oracle, prompts[:1])
    finally:
        torch.set_num_threads(threads)
    two_threads = single(oracle, prompts[:1])
    out["threads"] = {"1": one_thread, str(threads): two_threads, "speedup": ratio(two_threads, one_thread)}
    print(f"  {threads} threads over 1, lone call: {out['threads']['speedup']}")
    return out


if __name__ == "__main__":
    main()
