"""Instance validation: the bug is really there, and the gold patch really removes it.

For each instance, the hidden tests run twice in a sandbox: on the base code (every FAIL_TO_PASS test
must fail) and on the base code with the gold patch (every FAIL_TO_PASS and PASS_TO_PASS test must
pass). An instance that fails either check would score agents on a broken yardstick.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bloodwork.manifold.runner import CommandRunner, SandboxKind
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.repofix.instance import RepoFixInstance, builtin_instances
from bloodwork.tasks.repofix.judge import pytest_selectors, statuses_from_summary
from bloodwork.tasks.repofix.sources import Materialized, materialize, write_overlay


class InstanceValidation(BaseModel):
    """One instance's check. `ok`: the base fails every FAIL_TO_PASS test and passes every PASS_TO_PASS
    test, and with the gold patch every hidden test passes."""

    instance_id: str
    ok: bool
    base_fails_f2p: bool
    gold_passes_all: bool
    base_p2p_pass: bool
    base: dict[str, str] = Field(default_factory=dict)
    gold: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    duration_s: float = 0.0


def _run_hidden(inst: RepoFixInstance, tree: Path, sandbox: SandboxKind) -> tuple[dict[str, str], str]:
    cmd = (f"{inst.env_prefix()}{inst.test_cmd} -rA --tb=line -q --rootdir . "
           + " ".join(shlex.quote(s) for s in pytest_selectors(inst.hidden_tests)))
    runner = CommandRunner(tree, sandbox=sandbox)
    try:
        res = runner.run(cmd, inst.timeout_s)
    finally:
        runner.close()
    return statuses_from_summary(res.text, inst.hidden_tests), res.text[-1500:]


def _tree(mat: Materialized, dest: Path, *overlays: dict[str, bytes | None]) -> Path:
    shutil.copytree(mat.base, dest, symlinks=True)
    for overlay in overlays:
        write_overlay(dest, overlay)
    return dest


def validate_instance(inst: RepoFixInstance, *, sandbox: SandboxKind = "auto",
                      cache: Path | None = None) -> InstanceValidation:
    start = time.monotonic()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"bloodwork-validate-{inst.instance_id}-") as tmp:
        root = Path(tmp)
        try:
            mat = materialize(inst, root / "src", cache)
        except TaskError as err:
            return InstanceValidation(instance_id=inst.instance_id, ok=False, base_fails_f2p=False,
                                      gold_passes_all=False, base_p2p_pass=False, problems=[str(err)],
                                      duration_s=round(time.monotonic() - start, 3))
        base, base_tail = _run_hidden(inst, _tree(mat, root / "base", mat.hidden), sandbox)
        gold, gold_tail = _run_hidden(inst, _tree(mat, root / "gold", mat.gold, mat.hidden), sandbox)
    base_fails = all(base[t] != "PASSED" for t in inst.FAIL_TO_PASS)
    gold_ok = all(s == "PASSED" for s in gold.values())
    base_p2p = all(base[t] == "PASSED" for t in inst.PASS_TO_PASS)
    if not base_fails:
        problems.append("FAIL_TO_PASS tests passing on the base code: "
                        + ", ".join(t for t in inst.FAIL_TO_PASS if base[t] == "PASSED"))
    if not gold_ok:
        problems.append("hidden tests not passing with the gold patch: "
                        + ", ".join(f"{t} ({s})" for t, s in gold.items() if s != "PASSED")[:1000]
                        + f"\n{gold_tail}")
    if not base_p2p:
        problems.append("PASS_TO_PASS tests failing on the base code: "
                        + ", ".join(t for t in inst.PASS_TO_PASS if base[t] != "PASSED")[:1000] + f"\n{base_tail}")
    return InstanceValidation(instance_id=inst.instance_id, ok=base_fails and gold_ok and base_p2p,
                              base_fails_f2p=base_fails, gold_passes_all=gold_ok, base_p2p_pass=base_p2p,
                              base=base, gold=gold, problems=problems, duration_s=round(time.monotonic() - start, 3))


def validate_instances(instances: Sequence[RepoFixInstance] | None = None, *, sandbox: SandboxKind = "auto",
                       cache: Path | None = None) -> list[InstanceValidation]:
    """Validate the given instances (default: every built-in one), one result each, in order."""
    chosen = list(instances) if instances is not None else builtin_instances()
    return [validate_instance(inst, sandbox=sandbox, cache=cache) for inst in chosen]
