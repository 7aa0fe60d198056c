"""The repo-fix verifier: reproduce -> fix -> test -> PR draft, each stage checked for itself.

Everything runs in a throw-away folder inside one sandbox (a `CommandRunner` on that folder):

- `agent/`: a copy of the agent's workspace (the workspace itself is never touched);
- `base/`: the pristine base code, rebuilt from the pinned source, not from the agent's git history;
- `repro/`: the base code plus only the agent's test-side changes (tests, conftest, repro scripts),
  which is where a reproduction must fail;
- `hidden/`: the hidden test files, copied over `agent/` only after the reproduction runs.

The diff the PR draft stands for is computed by git in a scratch repository (`diff/`: base committed,
the agent's tree laid over it), so rewriting the workspace's history changes nothing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bloodwork.manifold.runner import CommandRunner, ExecResult, SandboxKind
from bloodwork.manifold.toolchain import Toolchain
from bloodwork.tasks.base import VerifierResult
from bloodwork.tasks.hidden_tests import read_junit, report_path, statuses_for, trusted_command, verifier_mounts
from bloodwork.tasks.repofix.instance import RepoFixInstance
from bloodwork.tasks.repofix.sources import IGNORED, Materialized

STAGES = ("none", "reproduced", "fixed", "tested", "pr_drafted")
PR_FILE = "PR.md"
MAX_REPRO_CANDIDATES = 8
DIFF_KEEP_CHARS = 20_000
TESTISH_DIRS = frozenset({"tests", "test", "testing"})
_SCRIPT_NAME = re.compile(r"^(repro|reproduce|reproduction)[\w-]*\.py$")
_TEST_NAME = re.compile(r"^(test_.*|.*_test)\.py$")
_SECTION_WORDS = {"cause": ("cause", "why", "root", "problem", "bug"),
                  "fix": ("fix", "change", "solution"),
                  "testing": ("test", "verif")}


def is_testish(path: str) -> bool:
    """A path on the test side of a change: reverting the library leaves these in place."""
    p = PurePosixPath(path)
    return (bool(TESTISH_DIRS & set(p.parts[:-1])) or p.name == "conftest.py"
            or bool(_TEST_NAME.match(p.name)) or bool(_SCRIPT_NAME.match(p.name)))


def repro_kind(path: str) -> str | None:
    """How a changed file is run as a reproduction: `pytest`, `script`, or None (not one)."""
    name = PurePosixPath(path).name
    if _SCRIPT_NAME.match(name):
        return "script"
    if _TEST_NAME.match(name) and name != "conftest.py":
        return "pytest"
    return None


def pytest_selectors(tests: list[str]) -> list[str]:
    """Pytest arguments that select the given ids: parameters dropped (`f::t[x]` -> `f::t`), deduplicated.

    Selecting by function rather than by file keeps a run on a big test module short; selecting by
    function rather than by full id avoids passing parameter ids (escapes, spaces) through a shell.
    """
    out: list[str] = []
    for test in tests:
        sel = test.split("[", 1)[0] if "::" in test else test
        if sel not in out:
            out.append(sel)
    return out


def check_pr(text: str | None) -> dict[str, Any]:
    """PR.md: a `# title` first, then non-empty sections on the cause, the fix and the testing."""
    if text is None:
        return {"exists": False, "ok": False, "problems": [f"{PR_FILE} is missing"]}
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    title = first[2:].strip() if first.startswith("# ") else ""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for ln in lines:
        if re.match(r"^#{2,6}\s", ln):
            current = ln.lstrip("#").strip().lower()
            sections[current] = []
        elif current is not None and ln.strip():
            sections[current].append(ln)
    found = {part: any(any(w in head for w in words) and body for head, body in sections.items())
             for part, words in _SECTION_WORDS.items()}
    problems = ([] if title else ["no `# title` line first"]) + [
        f"no non-empty section on the {part} (a `## ...` heading naming it)" for part, ok in found.items() if not ok]
    return {"exists": True, "title": title, "sections": sorted(sections), **{f"has_{k}": v for k, v in found.items()},
            "ok": not problems, "problems": problems}


@dataclass
class _Sandbox:
    runner: CommandRunner
    inst: RepoFixInstance
    mat: Materialized

    def sh(self, cmd: str, timeout_s: float = 120) -> tuple[int, str, bool]:
        res = self.runner.run(cmd, timeout_s)
        return res.exit_code, res.text, res.timed_out

    def env(self) -> str:
        """Variables before a test command run at a tree's root: its import path first, then the instance's."""
        return self.mat.pythonpath_prefix() + self.inst.env_prefix()


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:]


def _changed_files(box: _Sandbox, root: Path) -> tuple[list[tuple[str, str]], str, str]:
    """(status, path) of every file the agent added, modified or deleted, the stat, and the diff."""
    exclude = "\n".join((*IGNORED, f"/{PR_FILE}")) + "\n"
    script = " && ".join([
        "rm -rf diff && mkdir diff && cp -a base/. diff/ && cd diff",
        "git init -q && mkdir -p .git/info && printf %s " + shlex.quote(exclude) + " > .git/info/exclude",
        "git add -A && git -c user.name=v -c user.email=v@v commit -q --no-verify -m base",
        "find . -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +",
        "(cd ../agent && tar --exclude=./.git -cf - .) | tar -xf -",
        "git add -A",
        "git diff --cached --no-renames --name-status -z > ../out/names",
        "git diff --cached --no-renames --stat > ../out/stat",
        "git diff --cached --no-renames > ../out/diff",
    ])
    code, out, _ = box.sh(script)
    if code != 0:
        return [], f"diff failed (exit {code}): {_tail(out, 500)}", ""
    fields = (root / "out" / "names").read_bytes().decode(errors="replace").split("\0")
    changed = [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]
    return changed, (root / "out" / "stat").read_text(errors="replace"), \
        (root / "out" / "diff").read_text(errors="replace")


def _run_repro(box: _Sandbox, where: str, path: str, kind: str) -> dict[str, Any]:
    env = box.env()
    quoted = shlex.quote(path)
    cmd = (f"{env}{box.inst.test_cmd} -q --rootdir . {quoted}" if kind == "pytest" else f"{env}python3 {quoted}")
    code, out, timed_out = box.sh(f"cd {where} && {cmd}", timeout_s=min(box.inst.timeout_s, 120))
    return {"exit_code": code, "timed_out": timed_out, "output_tail": _tail(out, 800)}


def _reproduction(box: _Sandbox, changed: list[tuple[str, str]]) -> dict[str, Any]:
    testish = [(s, p) for s, p in changed if is_testish(p)]
    prep = ["rm -rf repro && cp -a base repro"]
    for status, path in testish:
        q = shlex.quote(path)
        prep.append(f"rm -rf repro/{q}" if status == "D" else
                    f"mkdir -p \"$(dirname repro/{q})\" && cp -a agent/{q} repro/{q}")
    box.sh(" && ".join(prep))
    candidates = [(p, k) for s, p in testish if s != "D" and (k := repro_kind(p))][:MAX_REPRO_CANDIDATES]
    results = []
    for path, kind in candidates:
        on_base = _run_repro(box, "repro", path, kind)
        on_fix = _run_repro(box, "agent", path, kind)
        fails_on_base = not on_base["timed_out"] and (
            on_base["exit_code"] == 1 if kind == "pytest" else on_base["exit_code"] != 0)
        results.append({"path": path, "kind": kind, "fails_on_base": fails_on_base,
                        "passes_on_fix": on_fix["exit_code"] == 0 and not on_fix["timed_out"],
                        "base": on_base, "fix": on_fix})
    return {"test_side_changes": [p for _, p in testish], "candidates": results,
            "reproduced": any(r["fails_on_base"] for r in results),
            "confirmed_by_fix": any(r["fails_on_base"] and r["passes_on_fix"] for r in results),
            "rule": "a test file (test_*.py, *_test.py) or script (repro*.py) the agent added or changed; "
                    "run on the base code plus the agent's test-side changes it must fail (pytest: tests "
                    "failed, exit 1; script: non-zero exit), and on the agent's code pass"}


def run_hidden_tests(runner: CommandRunner, inst: RepoFixInstance, mat: Materialized, tree: str,
                     args: str) -> tuple[str, ExecResult, dict[str, str]]:
    """`test_cmd ARGS` at `tree` (a folder of the runner's workspace) as the judge runs the hidden tests, and
    `tasks validate` too: the command, its result and each hidden test's status. Statuses come from
    pytest's JUnit report (returned by the sandbox), never from the output the agent's code can print into;
    the interpreter setup cannot be shadowed from the tree; the instance's import path (relative to the
    tree, where pytest starts) is put first by the verifier's plugin. The runner needs `verifier_mounts`."""
    cmd = f"cd {tree} && {inst.test_cmd} {args}"
    report = report_path()
    env = {**inst.env, "PYTHONPATH": ":".join(mat.pythonpath)}
    res = runner.run(trusted_command(cmd, report, runner.kind, env), inst.timeout_s, collect=report)
    return cmd, res, statuses_for(read_junit(res.collected), inst.hidden_tests)


def _hidden_tests(box: _Sandbox) -> dict[str, Any]:
    inst, mat = box.inst, box.mat
    place = []
    for rel, data in mat.hidden.items():
        q = shlex.quote(rel)
        place.append(f"rm -rf agent/{q}")
        if data is not None:
            place.append(f"mkdir -p \"$(dirname agent/{q})\" && cp hidden/{q} agent/{q}")
    if place:
        box.sh(" && ".join(place))
    selectors = " ".join(shlex.quote(s) for s in pytest_selectors(inst.hidden_tests))
    _, res, statuses = run_hidden_tests(box.runner, inst, mat, "agent", f"-rA --tb=short -q --rootdir . {selectors}")
    code, out, timed_out = res.exit_code, res.text, res.timed_out
    f2p = {t: statuses[t] for t in inst.FAIL_TO_PASS}
    p2p = {t: statuses[t] for t in inst.PASS_TO_PASS}
    return {"FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p,
            "f2p_ok": all(s == "PASSED" for s in f2p.values()),
            "p2p_ok": all(s == "PASSED" for s in p2p.values()),
            "exit_code": code, "timed_out": timed_out, "output_tail": _tail(out)}


def _read_pr(root: Path) -> str | None:
    path = root / "agent" / PR_FILE
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 200_000:
        return None
    return path.read_text(errors="replace")


def _copy_workspace(workspace: Path, dest: Path) -> list[str]:
    """Copy what can be copied; unreadable files are reported, not fatal (the agent may chmod things)."""
    try:
        shutil.copytree(workspace, dest, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    except shutil.Error as err:
        return [str(e[-1])[:200] for e in err.args[0]][:20]
    return []


def stage_of(reproduced: bool, fixed: bool, tested: bool, pr_ok: bool) -> str:
    """The furthest stage of the chain; a fix outranks a bare reproduction, the rest build on the fix."""
    if fixed:
        if tested:
            return "pr_drafted" if pr_ok else "tested"
        return "fixed"
    return "reproduced" if reproduced else "none"


def judge(inst: RepoFixInstance, mat: Materialized, workspace: Path, *, sandbox: SandboxKind = "auto",
          toolchain: Toolchain | None = None, stop: threading.Event | None = None) -> VerifierResult:
    """Score the agent's workspace for one instance; `passed` means the hidden tests pass (resolved).

    `toolchain` is the instance's environment (its interpreter runs every test command); `stop` is the
    run's stop event (SIGTERM), which kills a judgement in progress."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bloodwork-repofix-") as tmp:
        root = Path(tmp)
        copy_errors = _copy_workspace(workspace, root / "agent")
        shutil.copytree(mat.base, root / "base", symlinks=True)
        (root / "out").mkdir()
        for rel, data in mat.hidden.items():
            if data is not None:
                (root / "hidden" / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "hidden" / rel).write_bytes(data)
        runner = CommandRunner(root, sandbox=sandbox, mounts=verifier_mounts(sandbox), stop=stop, toolchain=toolchain)
        try:
            box = _Sandbox(runner, inst, mat)
            changed, stat, diff = _changed_files(box, root)
            repro = _reproduction(box, changed)
            hidden = _hidden_tests(box)
        finally:
            runner.close()
        pr = check_pr(_read_pr(root))
    fixed = hidden["f2p_ok"] and hidden["p2p_ok"]
    tested = fixed and repro["confirmed_by_fix"]
    stage = stage_of(repro["reproduced"], fixed, tested, pr["ok"])
    f2p, p2p = hidden["FAIL_TO_PASS"], hidden["PASS_TO_PASS"]
    reproduction = ("confirmed" if repro["confirmed_by_fix"] else
                    "fails on base only" if repro["reproduced"] else "none")
    summary = (f"stage {stage}: FAIL_TO_PASS {sum(s == 'PASSED' for s in f2p.values())}/{len(f2p)}, "
               f"PASS_TO_PASS {sum(s == 'PASSED' for s in p2p.values())}/{len(p2p)}, "
               f"reproduction {reproduction}, "
               f"{PR_FILE} {'ok' if pr['ok'] else 'missing' if not pr['exists'] else 'incomplete'}")
    details = {"instance_id": inst.instance_id, "repo": inst.repo, "version": inst.version, "bug": inst.bug,
               "stages": {"reproduced": repro["reproduced"], "fixed": fixed, "tested": tested, "pr_drafted": pr["ok"]},
               "reproduction": repro, "hidden_tests": hidden, "pr": pr,
               "diff": {"files": [{"status": s, "path": p} for s, p in changed], "stat": stat,
                        "patch": diff[:DIFF_KEEP_CHARS], "truncated": len(diff) > DIFF_KEEP_CHARS},
               "copy_errors": copy_errors}
    return VerifierResult(passed=fixed, summary=summary, stage=stage, details=details,
                          duration_s=round(time.monotonic() - start, 3))
