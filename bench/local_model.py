"""Benchmark of the embedded model: load time, decode speed (free vs constrained), serve throughput.

    .venv/bin/python bench/local_model.py [--repeats 3]

Prints its figures and writes bench/results/local_model.json. Every figure is measured here, per call,
with n and the spread; the machine is shared, so the load average before and after is recorded too.
The cold load uses a temporary, empty cache folder (removed afterwards), so it includes hashing the
GGUF, dequantizing it and writing the cache; "cached" is the next load from that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bloodwork.isa import ISA_PROMPT
from bloodwork.oracles.local import LocalOracle, Sampling, forget_loaded, load_model, make_local_oracle
from bloodwork.oracles.serve import ModelServer

RESULTS = Path(__file__).parent / "results" / "local_model.json"
NEW_TOKENS = 96
SLICE = "\n".join(f"def step_{i}(state):\n    state['n'] += {i}\n    return state  # tick {i}" for i in range(14))


def prompt() -> list[dict[str, str]]:
    """ISA prompt plus a code slice: ~600 tokens, the size of an early tick's context."""
    return [{"role": "system", "content": ISA_PROMPT},
            {"role": "user", "content": f"Goal: make tests/test_steps.py pass.\nq: (empty)\ns: steps.py\n{SLICE}"}]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def bench_load() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bloodwork-bench-cache-"))
    saved = os.environ.get("BLOODWORK_CACHE")
    os.environ["BLOODWORK_CACHE"] = str(root)
    try:
        forget_loaded()
        start = time.perf_counter()
        cold = load_model()
        cold_s = time.perf_counter() - start
        forget_loaded()
        start = time.perf_counter()
        cached = load_model()
        cached_s = time.perf_counter() - start
        assert not cold.from_cache and cached.from_cache
        return {"cold_s": round(cold_s, 2), "cached_s": round(cached_s, 2),
                "cache_mb": round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20, 1)}
    finally:
        forget_loaded()
        if saved is None:
            os.environ.pop("BLOODWORK_CACHE", None)
        else:
            os.environ["BLOODWORK_CACHE"] = saved
        shutil.rmtree(root, ignore_errors=True)


def decode_run(oracle: LocalOracle) -> dict[str, float]:
    """One generation; decode speed is tokens after the first over the time after the first (TTFT)."""
    done = oracle.generate(prompt(), Sampling(max_new_tokens=NEW_TOKENS))
    assert done.error is None and done.ttft_ms is not None and done.completion_tokens and done.prompt_tokens
    decode_s = (done.latency_ms - done.ttft_ms) / 1000
    return {"tokens": done.completion_tokens, "prompt_tokens": done.prompt_tokens, "ttft_ms": done.ttft_ms,
            "decode_tok_s": (done.completion_tokens - 1) / decode_s,
            "end_to_end_tok_s": done.completion_tokens / (done.latency_ms / 1000)}


def bench_decode(specs: list[str], repeats: int) -> dict[str, Any]:
    """Runs of the specs alternate, so a change in the shared machine's load hits them alike."""
    oracles = {spec: make_local_oracle(f"local:{spec}", spec) for spec in specs}
    for oracle in oracles.values():
        oracle.generate(prompt(), Sampling(max_new_tokens=4))  # warm-up (and the grammar's tokenizer)
    runs: dict[str, list[dict[str, float]]] = {spec: [] for spec in specs}
    for _ in range(repeats):
        for spec, oracle in oracles.items():
            runs[spec].append(decode_run(oracle))
    return {spec: {"prompt_tokens": rs[0]["prompt_tokens"]} | {
        key: summary([r[key] for r in rs]) for key in ("tokens", "ttft_ms", "decode_tok_s", "end_to_end_tok_s")}
        for spec, rs in runs.items()}


def bench_serve(clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    from openai import OpenAI

    with ModelServer("local:smollm2") as srv, OpenAI(base_url=srv.url, api_key="unused", max_retries=0) as sdk:
        def ask(_: int) -> tuple[float, int]:
            start = time.perf_counter()
            reply = sdk.chat.completions.create(model="m", messages=prompt(), max_tokens=max_tokens)
            return time.perf_counter() - start, reply.usage.completion_tokens

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(ask, range(requests)))
        wall = time.perf_counter() - start
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": requests, "max_tokens": max_tokens, "wall_s": round(wall, 2),
            "tokens": tokens, "tok_s": round(tokens / wall, 2), "requests_per_min": round(60 * requests / wall, 2),
            "latency_s": summary([s for s, _ in results])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve-requests", type=int, default=4)
    args = parser.parse_args()
    import torch
    import transformers

    load_before = os.getloadavg()
    load = bench_load()
    print(f"load: cold {load['cold_s']} s, cached {load['cached_s']} s ({load['cache_mb']} MB cache)")
    decode = bench_decode(["smollm2", "smollm2+constrained"], args.repeats)
    for name, d in decode.items():
        print(f"decode {name}: {d['decode_tok_s']['median']} tok/s (min {d['decode_tok_s']['min']}, "
              f"max {d['decode_tok_s']['max']}, n={d['decode_tok_s']['n']}), {d['tokens']['median']:g} tokens "
              f"after a {d['prompt_tokens']}-token prompt, TTFT {d['ttft_ms']['median']:.0f} ms")
    serve = [bench_serve(1, args.serve_requests, 32), bench_serve(4, args.serve_requests, 32)]
    for s in serve:
        print(f"serve {s['clients']} client(s): {s['tok_s']} tok/s, {s['requests_per_min']} req/min, "
              f"latency p50 {s['latency_s']['median']} s over {s['requests']} requests")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "load": load, "new_tokens": NEW_TOKENS, "decode": decode, "serve": serve,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
