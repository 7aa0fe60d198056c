"""The reference policy of a long-haul task folder: finish the modules, run the tests, halt.

The reference is the workspace as the task prepares it (its `files/`) overlaid with the folder's
`solution/` (the finished modules, never copied into a workspace). At each call the policy compares the workspace with
that reference and answers, in this order:

1. the first module of the solution (in `metadata.files_to_implement` order) that is missing, still a
   stub, half-written or wrong: written whole, or edited region by region when it is mostly right;
2. any other file of the starting workspace the run changed or deleted (SPEC, example tests, errors.py):
   restored;
3. files the run added that change what pytest collects or how (`conftest.py`, stray `test_*.py`,
   `pytest.ini`, ...): removed;
4. the visible tests, until the last slice is their passing run; then SYS_HALT.

A module that differs from the reference counts as wrong even if it might pass: the policy reproduces
the reference, it does not judge other solutions.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from bloodwork.experts.base import Decision, State, halt
from bloodwork.experts.edits import exec_op, file_op, prepared_texts, read_file, remove_op, tree_files, write_op
from bloodwork.experts.observe import exec_view
from bloodwork.oracles.base import OracleConfigError
from bloodwork.tasks.folder import FolderTask

DEFAULT_TEST_COMMAND = "python3 -m pytest -q -p no:cacheprovider"
SOLUTION_DIR = "solution"
_PYTEST_CONFIG = frozenset({"conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"})


def _affects_pytest(rel: str) -> bool:
    p = PurePosixPath(rel)
    return (p.name in _PYTEST_CONFIG and (p.name == "conftest.py" or len(p.parts) == 1)) or (
        p.suffix == ".py" and (p.name.startswith("test_") or p.stem.endswith("_test")))


class LongHaulPolicy:
    def __init__(self, task: FolderTask) -> None:
        solution = task.folder / SOLUTION_DIR
        if not solution.is_dir():
            raise OracleConfigError(f"expert:{task.id}: the task folder has no reference solution "
                                    f"({SOLUTION_DIR}/ next to files/)")
        self.task_id = task.id
        self.goal = task.goal
        self.start = prepared_texts(task.prepare)
        solved = {rel: (solution / rel).read_text() for rel in tree_files(solution)}
        order = [str(p) for p in task.metadata.get("files_to_implement", [])]
        self.modules = [rel for rel in order if rel in solved] + sorted(set(solved) - set(order))
        self.target = {**self.start, **solved}
        self.others = [rel for rel in sorted(self.start) if rel not in solved]
        self.test_cmd = str(task.metadata.get("visible_test_command") or DEFAULT_TEST_COMMAND)

    def _progress(self, state: State) -> tuple[list[str], str]:
        done = [rel for rel in self.modules if read_file(state.ws, rel) == self.target[rel]]
        names = ", ".join(PurePosixPath(rel).stem for rel in done) or "none"
        return done, f"reference modules done {len(done)}/{len(self.modules)}: {names}"

    def decide(self, state: State) -> Decision:
        ws = state.ws
        done, progress = self._progress(state)
        for rel in self.modules:
            op = file_op(ws, rel, self.target[rel])
            if op is None:
                continue
            current = read_file(ws, rel)
            if current == self.start.get(rel):
                op = write_op(rel, self.target[rel])  # a stub is implemented whole, not edited body by body
            why = ("is missing" if current is None else "is still the stub" if current == self.start.get(rel)
                   else "is cut short (a write did not finish)" if self.target[rel].startswith(current)
                   else "differs from the reference implementation")
            how = "edit the part that differs" if op["name"] == "SYS_EDIT" else "write it"
            return Decision(f"{rel} {why}: {how}.", f"{progress}; now: {rel}", op)
        for rel in self.others:
            op = file_op(ws, rel, self.target[rel])
            if op is not None:
                return Decision(f"{rel} was changed or removed; restore the original.",
                                f"{progress}; restoring {rel}", op)
        extras = [rel for rel in tree_files(ws.root) if rel not in self.target and _affects_pytest(rel)]
        if extras:
            return Decision(f"Added files change what pytest runs ({', '.join(extras[:5])}); remove them.",
                            f"{progress}; removing stray pytest files", remove_op(extras))
        seen = exec_view(state.last.slice)
        if seen is not None and seen.cmd == self.test_cmd and seen.ok:
            return halt("Every module matches the reference and the tests pass.",
                        "every module is implemented as SPEC.md says; the tests pass")
        why = ("The last test run did not pass; run it again." if seen is not None and seen.cmd == self.test_cmd
               else "Every module is written; run the tests.")
        return Decision(why, f"{progress}; running the tests", exec_op(self.test_cmd))

    def describe(self) -> dict[str, Any]:
        return {"policy": "long-haul", "reference": f"{SOLUTION_DIR}/ of the task folder",
                "modules": self.modules, "test_command": self.test_cmd}

    def close(self) -> None:
        return None
