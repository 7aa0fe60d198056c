"""Instance validation: the tests exist, the bug is really there, and the gold patch really removes it.

For each instance, in its own environment and a sandbox:

1. collection: on the base code with the gold patch and the hidden tests, `pytest --collect-only`
   must list every FAIL_TO_PASS and PASS_TO_PASS id (a misspelt id is named, never silently `missing`);
2. the hidden tests on the base code: every FAIL_TO_PASS test must fail and every PASS_TO_PASS test pass;
3. the hidden tests with the gold patch: every one must pass.

A pytest run that selects nothing (exit 3, 4 or 5: internal error, usage error such as `not found`,
nothing collected) proves nothing about the bug: it is reported with pytest's own error lines instead
of being read as "the base fails". An instance that fails any check would score agents on a broken
yardstick.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.manifold.runner import CommandRunner, SandboxKind
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.hidden_tests import verifier_mounts
from bloodwork.tasks.repofix.env import InstanceEnv, ensure_env
from bloodwork.tasks.repofix.instance import RepoFixInstance, builtin_instances
from bloodwork.tasks.repofix.judge import pytest_selectors, run_hidden_tests
from bloodwork.tasks.repofix.sources import Materialized, materialize, write_overlay

OUTPUT_KEEP = 3000
# pytest's exit codes for a run that never got to run the selected tests.
NOTHING_RAN = {3: "internal error", 4: "usage error", 5: "no tests collected"}


class PytestRun(BaseModel):
    """One pytest run of the hidden tests (or their collection), as evidence."""

    tree: str
    command: str
    exit_code: int
    timed_out: bool = False
    ran: bool = Field(description="pytest got to run (or list) the selected tests: not exit 3/4/5, not timed out")
    errors: list[str] = Field(default_factory=list, description="pytest's own ERROR / error lines")
    output_tail: str = ""


class InstanceValidation(BaseModel):
    """One instance's check. `ok`: every hidden test id is collected, the base fails every FAIL_TO_PASS test
    and passes every PASS_TO_PASS test, and with the gold patch every hidden test passes."""

    instance_id: str
    ok: bool
    collected_all: bool = False
    not_collected: list[str] = Field(default_factory=list)
    base_fails_f2p: bool
    gold_passes_all: bool
    base_p2p_pass: bool
    base: dict[str, str] = Field(default_factory=dict)
    gold: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    runs: list[PytestRun] = Field(default_factory=list)
    duration_s: float = 0.0


def _errors(output: str) -> list[str]:
    """pytest's own complaints: `ERROR: not found: ...`, `ERROR tests/x.py - ImportError`, `E   ...` lines."""
    keep = [ln.strip() for ln in output.splitlines()
            if re.match(r"^(ERROR|error:|E\s|ImportError|ModuleNotFoundError|no tests ran)", ln.strip())]
    return keep[:20]


def _pytest(runner: CommandRunner, inst: RepoFixInstance, mat: Materialized, tree: str,
            args: str) -> tuple[PytestRun, str, dict[str, str]]:
    """The run as evidence, its whole output (a collection listing does not fit the kept tail) and each hidden
    test's status. Run the way the judge runs the hidden tests, so an instance that validates is judged alike."""
    cmd, res, statuses = run_hidden_tests(runner, inst, mat, tree, args)
    ran = not res.timed_out and res.exit_code not in NOTHING_RAN
    return PytestRun(tree=tree, command=cmd, exit_code=res.exit_code, timed_out=res.timed_out, ran=ran,
                     errors=_errors(res.text), output_tail=res.text[-OUTPUT_KEEP:]), res.text, statuses


def collect(runner: CommandRunner, inst: RepoFixInstance, mat: Materialized, tree: str,
            root: Path) -> tuple[list[str], PytestRun | None]:
    """The hidden test ids pytest does not collect in `tree` (whose test files must exist), and the run."""
    files = list(dict.fromkeys(t.split("::", 1)[0] for t in inst.hidden_tests))
    present = [f for f in files if (root / tree / f).is_file()]
    missing = [t for t in inst.hidden_tests if t.split("::", 1)[0] not in present]
    if not present:
        return missing, None
    args = "--collect-only -q --rootdir . " + " ".join(map(shlex.quote, present))
    run, text, _ = _pytest(runner, inst, mat, tree, args)
    listed = {ln.strip() for ln in text.splitlines()} if run.ran else set()
    return missing + [t for t in inst.hidden_tests if t not in missing and t not in listed], run


def build_tree(mat: Materialized, dest: Path, *overlays: dict[str, bytes | None]) -> None:
    shutil.copytree(mat.base, dest, symlinks=True)
    for overlay in overlays:
        write_overlay(dest, overlay)


def _failed(inst: RepoFixInstance, started: float, problem: str, env: InstanceEnv | None = None) -> InstanceValidation:
    return InstanceValidation(instance_id=inst.instance_id, ok=False, base_fails_f2p=False, gold_passes_all=False,
                              base_p2p_pass=False, problems=[problem],
                              environment=env.summary() if env else {},
                              duration_s=round(time.monotonic() - started, 3))


def validate_instance(inst: RepoFixInstance, *, sandbox: SandboxKind = "auto",
                      cache: Path | None = None) -> InstanceValidation:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bloodwork-validate-{inst.instance_id}-") as tmp:
        root = Path(tmp)
        try:
            mat = materialize(inst, root / "src", cache)
            env = ensure_env(inst, mat.base)
        except TaskError as err:
            return _failed(inst, start, str(err))
        build_tree(mat, root / "base", mat.hidden)
        build_tree(mat, root / "gold", mat.gold, mat.hidden)
        runner = CommandRunner(root, sandbox=sandbox, toolchain=env.toolchain(), mounts=verifier_mounts(sandbox))
        try:
            not_collected, collect_run = collect(runner, inst, mat, "gold", root)
            selectors = " ".join(shlex.quote(s) for s in pytest_selectors(inst.hidden_tests))
            base_run, _, base = _pytest(runner, inst, mat, "base", f"-rA --tb=line -q --rootdir . {selectors}")
            gold_run, _, gold = _pytest(runner, inst, mat, "gold", f"-rA --tb=line -q --rootdir . {selectors}")
        finally:
            runner.close()
    problems: list[str] = []
    if not_collected:
        why = "; ".join(collect_run.errors[:3]) if collect_run and collect_run.errors else ""
        problems.append(f"{len(not_collected)} hidden test id(s) not collected by pytest with the gold patch: "
                        + ", ".join(not_collected) + (f" (pytest: {why})" if why else ""))
    for name, run in (("base", base_run), ("gold", gold_run)):
        if not run.ran:
            problems.append(f"the {name} run never ran the tests (pytest exit {run.exit_code}: "
                            f"{'timed out' if run.timed_out else NOTHING_RAN.get(run.exit_code, '?')}): "
                            + ("; ".join(run.errors[:3]) or run.output_tail[-300:].strip()))
    base_fails = base_run.ran and all(base[t] != "PASSED" for t in inst.FAIL_TO_PASS)
    gold_ok = gold_run.ran and all(s == "PASSED" for s in gold.values())
    base_p2p = base_run.ran and all(base[t] == "PASSED" for t in inst.PASS_TO_PASS)
    if base_run.ran and not base_fails:
        problems.append("FAIL_TO_PASS tests passing on the base code: "
                        + ", ".join(t for t in inst.FAIL_TO_PASS if base[t] == "PASSED"))
    if gold_run.ran and not gold_ok:
        problems.append("hidden tests not passing with the gold patch: "
                        + ", ".join(f"{t} ({s})" for t, s in gold.items() if s != "PASSED")[:1000])
    if base_run.ran and not base_p2p:
        problems.append("PASS_TO_PASS tests failing on the base code: "
                        + ", ".join(f"{t} ({base[t]})" for t in inst.PASS_TO_PASS if base[t] != "PASSED")[:1000])
    runs = [r for r in (collect_run, base_run, gold_run) if r is not None]
    return InstanceValidation(instance_id=inst.instance_id, ok=not problems, collected_all=not not_collected,
                              not_collected=not_collected, base_fails_f2p=base_fails, gold_passes_all=gold_ok,
                              base_p2p_pass=base_p2p, base=base, gold=gold, problems=problems,
                              environment=env.summary(), runs=runs, duration_s=round(time.monotonic() - start, 3))


def validate_instances(instances: Sequence[RepoFixInstance] | None = None, *, sandbox: SandboxKind = "auto",
                       cache: Path | None = None) -> list[InstanceValidation]:
    """Validate the given instances (default: every built-in one), one result each, in order."""
    chosen = list(instances) if instances is not None else builtin_instances()
    return [validate_instance(inst, sandbox=sandbox, cache=cache) for inst in chosen]
