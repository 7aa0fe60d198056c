"""The reference policy of a repo-fix instance: reproduce, apply the gold patch, test, write PR.md, halt.

The reference comes from the instance's own data, through the task's public `materialized()`: the
pristine base tree, the hidden test files (the upstream regression tests, or ours for an injected bug)
and the gold files (the fix). At each call the policy compares the workspace with base + tests + gold
and answers, in this order:

1. a hidden test file the workspace lacks or holds otherwise: written (or edited into place). These are
   the reproduction: the verifier runs them on the base code, where they fail;
2. a file of the prepared workspace (the base code) the run changed or deleted outside the fix (a
   misguided edit, a removed test): restored; files the run added are left alone;
3. while the library is untouched and the last slice is not the reproduction's run: run the
   FAIL_TO_PASS tests, to see them fail;
4. the gold patch, one changed region (`SYS_EDIT`) or file (`SYS_WRITE`) per tick;
5. the FAIL_TO_PASS and PASS_TO_PASS tests, until the last slice is their passing run; then PR.md
   (title, cause, fix, testing; the diff is left to git); then SYS_HALT.
"""

from __future__ import annotations

import shlex
from typing import Any

from bloodwork.experts.base import Decision, State, halt
from bloodwork.experts.edits import exec_op, file_op, prepared_texts, read_file, write_op
from bloodwork.experts.observe import exec_view
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


def test_command(prefix: str, tests: list[str]) -> str:
    """pytest on these test ids (by function; by file when that list would not fit in one command)."""
    selected = pytest_selectors(tests)
    cmd = prefix + " ".join(shlex.quote(s) for s in selected)
    if len(cmd) <= MAX_CMD // 2:
        return cmd
    files = list(dict.fromkeys(t.split("::", 1)[0] for t in tests))
    return prefix + " ".join(shlex.quote(f) for f in files)


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
        self.tests = _texts(mat.hidden, "hidden test", task.id)
        self.gold = _texts(mat.gold, "gold", task.id)
        fixed = set(self.tests) | set(self.gold)
        # The base is the workspace as the task prepares it (the released code, and whatever else preparing
        # puts there), so restoring a file never fights the task.
        self.base: dict[str, str | None] = dict(prepared_texts(task.prepare))
        self.restorable = [rel for rel in self.base if rel not in fixed]
        for rel in fixed:
            self.base.setdefault(rel, None)
        prefix = f"{inst.env_prefix()}{inst.test_cmd} -q --tb=line "
        self.repro_cmd = test_command(prefix, inst.FAIL_TO_PASS)
        self.test_cmd = test_command(prefix, inst.hidden_tests)
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
        if seen is not None and seen.cmd == self.test_cmd and seen.ok:
            if not check_pr(read_file(ws, PR_FILE))["ok"]:
                return Decision("Fixed and tested; write the PR description.", "tested; writing PR.md",
                                write_op(PR_FILE, self.pr))
            return halt("Reproduced, fixed, tested, PR drafted.", "bug fixed and tested; PR.md written")
        if state.last.slice.startswith(f"write: {PR_FILE} ") and check_pr(read_file(ws, PR_FILE))["ok"]:
            return halt("Reproduced, fixed, tested, PR drafted.", "bug fixed and tested; PR.md written")
        return Decision("The fix is in; run the regression and the existing tests.", "fixed; testing",
                        exec_op(self.test_cmd))

    def describe(self) -> dict[str, Any]:
        return {"policy": "repo-fix", "reference": "the instance's gold patch and hidden tests",
                "tests": list(self.tests), "gold": list(self.gold)}

    def close(self) -> None:
        self.task.close()
