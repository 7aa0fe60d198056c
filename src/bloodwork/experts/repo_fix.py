"""The reference policy of a repo-fix instance: reproduce, apply the gold patch, test, write PR.md, halt.

The reference comes from the instance's own data, through the task's public `materialized()`: the
pristine base tree, the hidden test files (the upstream regression tests, or ours for an injected bug)
and the gold files (the fix). At each call the policy compares the workspace with base + tests + gold
and answers, in this order:

1. a hidden test file the workspace lacks or holds otherwise: written (or edited into place), without
   the tests it adds for other changes of the same release (`related_tests`). These are the reproduction:
   the verifier runs them on the base code, where they fail, and on the fix, where they pass;
2. a file of the prepared workspace (the base code) the run changed or deleted outside the fix (a
   misguided edit, a removed test): restored; files the run added are left alone;
3. while the library is untouched and the last slice is not the reproduction's run: run the
   FAIL_TO_PASS tests, to see them fail;
4. the gold patch, one changed region (`SYS_EDIT`) or file (`SYS_WRITE`) per tick;
5. the FAIL_TO_PASS and PASS_TO_PASS tests, until the last slice is their passing run; then PR.md
   (title, cause, fix, testing; the diff is left to git); then SYS_HALT.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from typing import Any

from bloodwork import prompts
from bloodwork.experts.base import Decision, State, halt
from bloodwork.experts.edits import exec_op, file_op, prepared_texts, read_file, write_op
from bloodwork.experts.observe import ExecView, exec_view
from bloodwork.isa import MAX_CMD
from bloodwork.oracles.base import OracleConfigError
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.repofix import RepoFixTask
from bloodwork.tasks.repofix.judge import PR_FILE, check_pr, pytest_selectors


def _texts(files: dict[str, bytes | None], what: str, task_id: str) -> dict[str, str | None]:
    """Overlay files as text: an ISA op carries text only, so a binary file cannot be the reference."""
    out: dict[str, str | None] = {}
    for rel, data in files.items():
        try:
            out[rel] = None if data is None else data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise OracleConfigError(f"expert:{task_id}: {what} file {rel} is not UTF-8 text; no ISA op can "
                                    "write it") from err
    return out


_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)
CMD_ROOM = MAX_CMD - 100


@dataclass(frozen=True)
class PytestRun:
    """A pytest command over some test ids and how to tell from its slice that those ids passed.

    By function (`file::test`, parameters dropped) the command runs exactly the wanted tests and its exit
    code decides. When that list does not fit in one command, coarser selectors (classes, then files) run
    other tests too, some of which may fail for reasons outside the bug; then `-rfE` lists the failures
    and the run counts as passing when none of them is a wanted test.
    """

    cmd: str
    exact: bool
    wanted: frozenset[str]

    def passed(self, seen: ExecView) -> bool:
        if seen.cmd != self.cmd or seen.timed_out:
            return False
        if self.exact:
            return seen.exit_code == 0
        failing = {m.split("[", 1)[0] for m in _FAILED_LINE.findall(seen.output)}
        return " passed" in seen.output and not failing & self.wanted


def pytest_run(prefix: str, tests: list[str], test_dir: str) -> PytestRun:
    functions = pytest_selectors(tests)
    classes = list(dict.fromkeys(s.rsplit("::", 1)[0] if s.count("::") > 1 else s for s in functions))
    files = list(dict.fromkeys(t.split("::", 1)[0] for t in tests))
    wanted = frozenset(functions)
    exact = prefix + " ".join(shlex.quote(s) for s in functions)
    if len(exact) <= CMD_ROOM:
        return PytestRun(cmd=exact, exact=True, wanted=wanted)
    for selectors in (classes, files):
        cmd = prefix + "-rfE " + " ".join(shlex.quote(s) for s in selectors)
        if len(cmd) <= CMD_ROOM:
            return PytestRun(cmd=cmd, exact=False, wanted=wanted)
    return PytestRun(cmd=prefix + "-rfE " + shlex.quote(test_dir), exact=False, wanted=wanted)


_Def = ast.FunctionDef | ast.AsyncFunctionDef


def _test_defs(tree: ast.Module) -> dict[tuple[str, ...], _Def]:
    """Top-level test functions and test methods of top-level classes, by (name,) or (class, name)."""
    found: dict[tuple[str, ...], _Def] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            found[(node.name,)] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    found[(node.name, item.name)] = item
    return found


def related_tests(path: str, text: str, base_text: str | None, tests: list[str]) -> str:
    """The hidden test file without the tests it adds that are not this instance's.

    An upstream release's test file also carries tests of other changes in that release; on the base code
    with only this fix they fail, and a reproduction that fails on the fix too confirms nothing. Tests the
    base already has, and the instance's FAIL_TO_PASS and PASS_TO_PASS tests, are kept as they are.
    """
    if not path.endswith(".py"):
        return text
    try:
        tree = ast.parse(text)
        base = _test_defs(ast.parse(base_text)) if base_text else {}
    except SyntaxError:
        return text
    wanted = {tuple(sel.split("::")[1:]) for sel in pytest_selectors(tests) if sel.startswith(path + "::")}
    drop = [node for name, node in _test_defs(tree).items() if name not in wanted and name not in base]
    if not drop:
        return text
    lines = text.splitlines(keepends=True)
    cut: set[int] = set()
    for node in drop:
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        cut.update(range(first - 1, node.end_lineno or node.lineno))
    return "".join(line for i, line in enumerate(lines) if i not in cut)


def pr_text(task: RepoFixTask, gold: list[str], tests: list[str]) -> str:
    inst = task.inst
    title = next((ln.strip() for ln in inst.problem_statement.splitlines() if ln.strip()), inst.instance_id)
    f2p = ", ".join(f"`{t}`" for t in inst.FAIL_TO_PASS[:5]) + (" ..." if len(inst.FAIL_TO_PASS) > 5 else "")
    cause = (f"{inst.repo} {inst.version}: {title.rstrip('.')}. The regression tests {f2p} reproduce it on "
             f"the released code; the faulty logic is in {', '.join(f'`{p}`' for p in gold)}.")
    if inst.bug == "real" and inst.upstream:
        cause += f" Upstream: {inst.upstream}."
    return (f"# Fix: {title}\n\n## Cause\n{cause}\n\n## Fix\nChanged {', '.join(f'`{p}`' for p in gold)} so that "
            f"the case from the report is handled; nothing else in the library changes (the diff is in git).\n\n"
            f"## Testing\n- Added the regression tests in {', '.join(f'`{p}`' for p in tests)}: they fail on the "
            f"base code and pass with the fix.\n- The FAIL_TO_PASS tests and the {len(inst.PASS_TO_PASS)} "
            f"PASS_TO_PASS tests pass: `{inst.test_cmd} -q {inst.test_dir}`.\n")


class RepoFixPolicy:
    def __init__(self, task: RepoFixTask) -> None:
        self.task = task
        self.task_id = task.id
        self.goal = task.goal
        inst = task.inst
        try:
            mat = task.materialized()
        except TaskError as err:
            raise OracleConfigError(f"expert:{task.id}: cannot build the reference: {err}") from err
        hidden = _texts(mat.hidden, "hidden test", task.id)
        self.gold = _texts(mat.gold, "gold", task.id)
        fixed = set(hidden) | set(self.gold)
        # The base is the workspace as the task prepares it (the released code, and whatever else preparing
        # puts there), so restoring a file never fights the task.
        self.base: dict[str, str | None] = dict(prepared_texts(task.prepare))
        self.tests = {rel: text if text is None else related_tests(rel, text, self.base.get(rel), inst.hidden_tests)
                      for rel, text in hidden.items()}
        self.restorable = [rel for rel in self.base if rel not in fixed]
        for rel in fixed:
            self.base.setdefault(rel, None)
        prefix = f"{inst.env_prefix()}{inst.test_cmd} -q --tb=line "
        self.repro_cmd = pytest_run(prefix, inst.FAIL_TO_PASS, inst.test_dir).cmd
        self.tests_run = pytest_run(prefix, inst.hidden_tests, inst.test_dir)
        self.pr = pr_text(task, list(self.gold), [p for p, text in self.tests.items() if text is not None])

    def decide(self, state: State) -> Decision:
        ws = state.ws
        for rel, text in self.tests.items():
            op = file_op(ws, rel, text)
            if op is not None:
                return Decision(f"Reproduce the bug first: put the regression test {rel} in place.",
                                f"reproduce: writing {rel}", op)
        for rel in self.restorable:
            op = file_op(ws, rel, self.base[rel])
            if op is not None:
                return Decision(f"{rel} was changed outside the fix; restore it as released.",
                                f"restoring {rel}", op)
        seen = exec_view(state.last.slice)
        pending = [rel for rel, text in self.gold.items() if read_file(ws, rel) != text]
        if pending:
            untouched = all(read_file(ws, rel) == self.base[rel] for rel in self.gold)
            reproduced = seen is not None and seen.cmd == self.repro_cmd and not seen.timed_out
            if untouched and not reproduced:
                return Decision("Run the regression tests on the unfixed code: they must fail.",
                                "reproduce: running the failing tests", exec_op(self.repro_cmd))
            rel = pending[0]
            op = file_op(ws, rel, self.gold[rel])
            assert op is not None  # pending: the file differs from its gold text
            why = "The regression tests fail as reported" if reproduced else f"{rel} does not hold the fix yet"
            return Decision(f"{why}; fix {rel}.", f"fixing {rel} ({len(pending)} files left)", op)
        if seen is not None and self.tests_run.passed(seen):
            if not check_pr(read_file(ws, PR_FILE))["ok"]:
                return Decision("Fixed and tested; write the PR description.", "tested; writing PR.md",
                                write_op(PR_FILE, self.pr))
            return halt("Reproduced, fixed, tested, PR drafted.", "bug fixed and tested; PR.md written")
        if prompts.is_write_result(state.last.slice, PR_FILE) and check_pr(read_file(ws, PR_FILE))["ok"]:
            return halt("Reproduced, fixed, tested, PR drafted.", "bug fixed and tested; PR.md written")
        return Decision("The fix is in; run the regression and the existing tests.", "fixed; testing",
                        exec_op(self.tests_run.cmd))

    def describe(self) -> dict[str, Any]:
        return {"policy": "repo-fix", "reference": "the instance's gold patch and hidden tests",
                "tests": list(self.tests), "gold": list(self.gold)}

    def close(self) -> None:
        self.task.close()
