"""The two things every reference policy stands on: reading the kernel's last message, and turning a
file's target text into the next op from whatever the file holds now."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodwork.context.builder import ContextBuilder, ContextConfig
from bloodwork.experts.edits import file_op
from bloodwork.experts.observe import exec_view, last_message
from bloodwork.manifold.workspace import Workspace
from bloodwork.oracles.base import CharEstimate

TARGET = "".join(f"line {i}\n" for i in range(40))


def test_last_message_reads_what_the_context_builder_wrote() -> None:
    builder = ContextBuilder(ContextConfig(), CharEstimate(), "system", "the goal")
    slice_text = "$ ls\n[exit 0, 3 bytes of output]\na\n\nb"  # blank lines inside a slice are the slice's own
    ctx, _ = builder.build([], "done: a\n\nnext: b", "sys://exec/4", slice_text, True, 5)
    seen = last_message(ctx.messages)
    assert (seen.q, seen.d, seen.slice, seen.found) == ("done: a\n\nnext: b", "sys://exec/4", slice_text, True)
    probe = [*ctx.messages, {"role": "user", "content": "Kernel probe: what is your goal?"}]
    assert last_message(probe).slice == slice_text  # a goal probe's question comes after the tick's message
    assert not last_message([{"role": "user", "content": "hello"}]).found


def test_exec_view_reads_the_kernels_exec_head(tmp_path: Path) -> None:
    ok = exec_view("$ python3 -m pytest -q\n[exit 0, 120 bytes of output]\n5 passed\n")
    assert ok is not None and ok.ok and ok.cmd == "python3 -m pytest -q" and ok.output == "5 passed\n"
    multi = exec_view("$ cat > f <<'X'\nhi\nX\n./go.sh\n[exit 1, TIMED OUT after 2s, 0 bytes of output]\n")
    assert multi is not None and multi.cmd == "cat > f <<'X'\nhi\nX\n./go.sh" and multi.timed_out and not multi.ok
    assert exec_view("TRAP IO_FAULT: write failed") is None and exec_view("write: a.py (3 bytes, changed)") is None


@pytest.mark.parametrize(("current", "expected"), [
    (None, "SYS_WRITE"),  # missing
    ("", "SYS_WRITE"),  # emptied
    ("something else entirely\n", "SYS_WRITE"),  # mostly different
    (TARGET.replace("line 7\n", "line seven\n"), "SYS_EDIT"),  # one region wrong
    (TARGET.replace("line 7\n", ""), "SYS_EDIT"),  # a line lost
    (TARGET[: len(TARGET) * 3 // 4], "SYS_EDIT"),  # cut short by a failed write
])
def test_file_op_converges_from_any_start(tmp_path: Path, current: str | None, expected: str) -> None:
    ws = Workspace(tmp_path)
    if current is not None:
        (tmp_path / "f.txt").write_text(current)
    ops = []
    for _ in range(6):
        op = file_op(ws, "f.txt", TARGET)
        if op is None:
            break
        ops.append(op["name"])
        if op["name"] == "SYS_WRITE":
            (tmp_path / "f.txt").write_text(op["content"])
        else:
            text = (tmp_path / "f.txt").read_text()
            assert text.count(op["search"]) == 1, "the kernel refuses a search text that is not unique"
            (tmp_path / "f.txt").write_text(text.replace(op["search"], op["replace"], 1))
    assert (tmp_path / "f.txt").read_text() == TARGET and ops[0] == expected and len(ops) <= 2


def test_file_op_edits_one_region_at_a_time_with_unique_context(tmp_path: Path) -> None:
    repeated = "x = 1\n" * 5 + "y = 2\n" + "x = 1\n" * 5
    (tmp_path / "f.py").write_text(repeated)
    op = file_op(Workspace(tmp_path), "f.py", repeated.replace("y = 2", "y = 3"))
    assert op is not None and op["name"] == "SYS_EDIT" and repeated.count(op["search"]) == 1
    assert "y = 3" in op["replace"] and "y = 2" in op["search"]
    two = TARGET.replace("line 3\n", "line three\n").replace("line 30\n", "line thirty\n")
    (tmp_path / "g.txt").write_text(two)
    first = file_op(Workspace(tmp_path), "g.txt", TARGET)
    assert first is not None and "line three" in first["search"] and "line thirty" not in first["search"]


def test_file_op_removes_what_must_not_exist_and_leaves_what_is_right(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    (tmp_path / "conftest.py").write_text("raise SystemExit\n")
    (tmp_path / "dir").mkdir()
    assert file_op(ws, "conftest.py", None) == {"name": "SYS_EXEC", "cmd": "rm -rf -- conftest.py"}
    assert file_op(ws, "absent.py", None) is None
    assert file_op(ws, "dir", "text")["name"] == "SYS_EXEC"  # a directory where a file must go
    (tmp_path / "ok.txt").write_text(TARGET)
    assert file_op(ws, "ok.txt", TARGET) is None
