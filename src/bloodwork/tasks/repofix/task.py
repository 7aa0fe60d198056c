"""`repo-fix/<instance>`: a real project checked out in the workspace, one bug report, a hidden verifier."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bloodwork.manifold.runner import SandboxKind
from bloodwork.manifold.toolchain import Toolchain
from bloodwork.tasks.base import CommandRunnerLike, TaskError, VerifierResult
from bloodwork.tasks.repofix.env import InstanceEnv, ensure_env
from bloodwork.tasks.repofix.instance import RepoFixInstance
from bloodwork.tasks.repofix.judge import PR_FILE, STAGES, judge
from bloodwork.tasks.repofix.sources import Materialized, init_repo, materialize

GOAL = """You maintain {repo} (version {version}). Its source is checked out at the workspace root, a git
repository whose commit tagged `base` is the released code. A user filed this bug report:

---
{problem}
---

Work like a maintainer, in this order:
1. Reproduce: add a test that shows the bug (a new `test_*.py` file, or a test added to an existing one,
   under {test_dir}/) or a script named `repro.py`. It must fail on the base code.
2. Fix the bug in the library code (not in the tests).
3. Test: run your reproduction and the project's tests: `{test_cmd}`. Both must pass. `python3` is the
   project's own environment, and the checkout's code comes first on its import path.
4. Write {pr} at the workspace root: a `# title` line, then the sections `## Cause` (why it happened),
   `## Fix` (what you changed) and `## Testing` (how you tested it). The diff is taken from git; do
   not paste it.
Then SYS_HALT. Hidden tests decide whether the bug is fixed."""


class RepoFixTask:
    """One instance as a task. Its trees are built once per task object, in a folder `close` removes."""

    def __init__(self, inst: RepoFixInstance, *, sandbox: SandboxKind = "auto", cache: Path | None = None) -> None:
        self.inst = inst
        self.sandbox: SandboxKind = sandbox
        self.cache = cache
        self.id = f"repo-fix/{inst.instance_id}"
        self.source = self.id  # what `load_task` takes to build this task again (a path for instance files)
        test_cmd = f"{inst.env_prefix()}{inst.test_cmd} -q {inst.test_dir}"
        self.goal = GOAL.format(repo=inst.repo, version=inst.version, problem=inst.problem_statement.strip(),
                                test_dir=inst.test_dir, test_cmd=test_cmd, pr=PR_FILE)
        if inst.source_archive:
            source = f"PyPI sdist {inst.source_archive.spec} (sha256 {inst.source_archive.sha256[:12]}...)"
        elif inst.base_archive:
            source = (f"base archive {inst.base_archive.path} (sha256 {inst.base_archive.sha256[:12]}...)"
                      + (f" of commit {inst.base_commit}" if inst.base_commit else ""))
        else:
            source = f"{inst.repo_dir} @ {inst.base_commit}"
        self.metadata: dict[str, Any] = {
            "kind": "repo-fix", "synthetic": inst.bug == "injected", "instance_id": inst.instance_id,
            "repo": inst.repo, "version": inst.version, "bug": inst.bug, "upstream": inst.upstream,
            "source": source,
            "fix_release": inst.fix_release.sdist.spec if inst.fix_release else None,
            "FAIL_TO_PASS": inst.FAIL_TO_PASS, "PASS_TO_PASS": len(inst.PASS_TO_PASS),
            "stages": list(STAGES),
            "verifier": ("in a sandboxed copy of the workspace: reproduced = a test or repro script the agent "
                         "added fails on the pristine base code; fixed = hidden FAIL_TO_PASS and PASS_TO_PASS "
                         "tests all pass (this is `passed`, i.e. resolved); tested = fixed and the agent's "
                         "reproduction passes on its code; pr_drafted = tested and PR.md has a title and "
                         "Cause/Fix/Testing sections; the diff is taken from git against the base"),
        }
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._mat: Materialized | None = None
        self._env: InstanceEnv | None = None

    def materialized(self) -> Materialized:
        """Base tree and overlays, built on first use (downloads the sdists once into the cache)."""
        if self._mat is None:
            tmp = tempfile.TemporaryDirectory(prefix=f"bloodwork-{self.inst.instance_id}-")
            try:
                self._mat = materialize(self.inst, Path(tmp.name), self.cache)
            except BaseException:
                tmp.cleanup()
                raise
            self._tmp = tmp
        return self._mat

    def environment(self) -> InstanceEnv:
        """The instance's environment, built on first use and cached across runs (see `env.py`)."""
        if self._env is None:
            self._env = ensure_env(self.inst, self.materialized().base)
            self.metadata["environment"] = self._env.summary()
        return self._env

    def toolchain(self) -> Toolchain:
        """What the run's sandbox gives the agent: the instance's interpreter, the checkout first on its path."""
        return self.environment().toolchain(pythonpath=self.materialized().pythonpath, env=self.inst.env)

    def prepare(self, workspace: Path, seed: int) -> None:
        """The base code at the workspace root, committed and tagged `base` so the agent can diff.

        Everything that can fail (download, environment, git) fails here as a one-line `TaskError`."""
        try:
            self.environment()
            shutil.copytree(self.materialized().base, workspace, symlinks=True, dirs_exist_ok=True)
            init_repo(workspace)
        except TaskError:
            raise
        except (OSError, shutil.Error, subprocess.SubprocessError) as err:
            raise TaskError(f"{self.id}: cannot prepare the workspace: {err}") from err

    def start(self, runner: CommandRunnerLike, *, seed: int, resumed: bool) -> None:
        return None

    def on_tick(self, runner: CommandRunnerLike, tick: int, seed: int) -> list[dict[str, Any]]:
        return []

    def verify(self, workspace: Path, runner: CommandRunnerLike | None = None) -> VerifierResult:
        """Judged in a copy, in a sandbox of its own; the run's sandbox is not used."""
        return judge(self.inst, self.materialized(), workspace, sandbox=self.sandbox,
                     toolchain=self.environment().toolchain(), stop=getattr(runner, "stop", None))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        self._tmp = None
        self._mat = None
        self._env = None
