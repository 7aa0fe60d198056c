"""Model-facing text: one module, parsers that read it back through it, and a prompt without placeholders."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from bloodwork import prompts
from bloodwork.context.builder import ContextBuilder, ContextConfig
from bloodwork.data import fork, mine
from bloodwork.isa import parse
from bloodwork.kernel import traps
from bloodwork.kernel.loop import CHAOS_TRAPS
from bloodwork.kernel.traps import TRAPS, TrapKind
from bloodwork.oracles.base import CharEstimate
from bloodwork.tasks.registry import load_task

SRC = Path(prompts.__file__).parent
# Placeholders of the prompt before issue 12: the constrained model answered with them verbatim.
OLD_PLACEHOLDERS = ("short reasoning", "your new state register", "notes for your future self", "why the goal is met",
                    '"file.py"', '"..."')


@pytest.mark.parametrize(("q", "d", "slice_text"), [
    ("", "sys://start", "Task started."),
    ("done: a\n\nnext: b", "src/x.py#page=2", "line\n\nAnswer with one JSON frame.\n\nmore"),
    ("q", "sys://exec/4", ""),
])
def test_split_tail_inverts_the_tail_the_builder_sends(q: str, d: str, slice_text: str):
    builder = ContextBuilder(ContextConfig(), CharEstimate(), prompts.ISA_PROMPT, "the goal")
    built, _ = builder.build([], q, d, slice_text, True, 0)
    assert built.messages[-1]["content"] == built.tail
    assert prompts.split_tail(built.tail) == (q, d, slice_text)
    assert prompts.split_tail("REGISTER q:\nq\n\nno slice here") is None


@pytest.mark.parametrize(("cmd", "exit_code", "timed_out", "spawn_error"), [
    ("python3 -m pytest -q", 0, None, None),
    ("cat > f <<'X'\nhi\nX\n./go.sh", 1, 2.0, None),
    ("nosuch", 127, None, "cannot start: nosuch"),
])
def test_split_exec_head_inverts_exec_head(cmd: str, exit_code: int, timed_out: float | None,
                                           spawn_error: str | None):
    head = prompts.exec_head(cmd, exit_code, 42, timed_out, spawn_error)
    rest = (f"[{spawn_error}]\n" if spawn_error else "") + "5 passed\n"
    assert prompts.split_exec_head(head + "5 passed\n") == (cmd, exit_code, timed_out is not None, rest)
    assert prompts.split_exec_head(prompts.trap_slice("IO_FAULT", "x")) is None
    assert prompts.is_write_result(prompts.write_result("write", "PR.md", 3, True), "PR.md")
    assert not prompts.is_write_result(prompts.write_result("write", "PR.md.bak", 3, True), "PR.md")


def test_prompts_is_the_lowest_layer_and_the_only_home_of_the_parsed_literals():
    tree = ast.parse((SRC / "prompts.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("bloodwork")]
    for path in SRC.rglob("*.py"):
        if path.name == "prompts.py":
            continue
        text = path.read_text()
        for literal in ("REGISTER q:", "SLICE at d=", "Answer with one JSON frame", "Files in the workspace",
                        "bytes of output", '"GOAL:'):
            assert literal not in text, f"{path.relative_to(SRC)} copies {literal!r}: import it from prompts"


def test_every_trap_kind_has_one_ask_and_the_isa_prompt_states_it():
    assert set(prompts.TRAP_ASKS) == {k.value for k in TrapKind} == {k.value for k in TRAPS}
    for kind, ask in prompts.TRAP_ASKS.items():
        assert f"{kind}: {ask}" in prompts.ISA_PROMPT
        assert prompts.trap_slice(kind, "detail").endswith(ask + ".")


def test_the_isa_prompt_has_a_valid_worked_example_and_no_placeholders():
    assert parse(json.dumps(prompts.EXAMPLE_FRAME)).strict_ok
    example = prompts.EXAMPLE_FRAME
    for value in (example["thought"], example["q_next"], *example["op"].values()):
        assert value.strip() in prompts.ISA_PROMPT
    # no JSON value follows a key anywhere: a small model continues `"thought": "` with whatever followed it
    assert '"thought": "' not in prompts.ISA_PROMPT and '": "' not in prompts.ISA_PROMPT
    for phrase in OLD_PLACEHOLDERS:
        assert phrase not in prompts.ISA_PROMPT
    assert all(p in prompts.ISA_PROMPT for p in prompts.TEMPLATE_PHRASES)
    # the example is foreign to every built-in task: copying it can never be the right answer
    for task_id in ("long-haul/ledger", "repo-fix/sqlparse-784", "ops-blindbox/kill9"):
        goal = load_task(task_id).goal
        assert not [p for p in prompts.TEMPLATE_PHRASES if p in goal]


def test_every_trap_set_is_derived_from_the_one_table():
    assert {TrapKind.WATCHDOG, TrapKind.THRASHING} == traps.ALWAYS_PANIC
    assert CHAOS_TRAPS == {"exec_timeout": TrapKind.EXEC_TIMEOUT, "write_deny": TrapKind.IO_FAULT,
                           "disk_full": TrapKind.IO_FAULT, "log_flood": TrapKind.LOG_FLOOD,
                           "oracle_error": TrapKind.ORACLE_FAULT, "oracle_truncate": TrapKind.SCHEMA_VIOLATION}
    assert mine.NEGATIVE_TRAPS is traps.NEGATIVE_TRAPS
    assert fork.ENVIRONMENT_TRAPS is traps.ENVIRONMENT_TRAPS and fork.LOOP_TRAPS is traps.LOOP_TRAPS
    assert {"THRASHING", "WATCHDOG", "SCHEMA_VIOLATION", "ILLEGAL_HALT"} == traps.NEGATIVE_TRAPS
    assert {"LOG_FLOOD", "IO_FAULT", "ORACLE_FAULT"} == traps.ENVIRONMENT_TRAPS


def test_the_readme_trap_table_lists_every_kind_once():
    readme = (SRC.parents[1] / "README.md").read_text()
    rows = [line.split("|")[1].strip(" `") for line in readme.splitlines() if line.startswith("| `")]
    assert sorted(r for r in rows if r in {k.value for k in TrapKind}) == sorted(k.value for k in TrapKind)
