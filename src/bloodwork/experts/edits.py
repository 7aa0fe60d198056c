"""Turning "this file should read so" into one ISA op, from whatever the file holds now.

A reference policy knows the target text of each file; the student may have left the file missing,
half-written, edited in a few places or replaced by something else. `file_op` answers the next op
that brings it closer: one `SYS_EDIT` per changed region when the file is mostly right (the smallest
search text that is unique in the file, grown line by line), a whole `SYS_WRITE` when it is missing
or mostly different, `rm` when the file should not exist. Each call handles one region, so a file
with three wrong regions takes three ticks, and each tick is an op a model could have answered.
"""

from __future__ import annotations

import difflib
import os
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodwork.manifold.workspace import Workspace, WorkspaceError

Op = dict[str, Any]
MAX_EDIT_REGIONS = 4  # more separate changes than this: write the file whole
MIN_SIMILARITY = 0.5  # below this share of equal lines the file is rewritten, not edited
MAX_CONTEXT_LINES = 30


def read_file(ws: Workspace, rel: str) -> str | None:
    """The file's text, or None when it is missing or not a regular file (the policy never writes here)."""
    try:
        return ws.read_text(rel)
    except WorkspaceError:
        return None


def is_blocked(ws: Workspace, rel: str) -> bool:
    """Something that is not a regular file (a directory, a link) sits where a file must go."""
    path = ws.root / rel
    return path.is_symlink() or (path.exists() and not path.is_file())


def write_op(path: str, content: str) -> Op:
    return {"name": "SYS_WRITE", "path": path, "content": content}


def exec_op(cmd: str) -> Op:
    return {"name": "SYS_EXEC", "cmd": cmd}


def remove_op(paths: list[str]) -> Op:
    return exec_op("rm -rf -- " + " ".join(shlex.quote(p) for p in paths))


def _region_edit(path: str, current: str, target: str) -> Op | None:
    """A SYS_EDIT for the first changed region, or None when editing is the wrong tool."""
    cur = current.splitlines(keepends=True)
    tgt = target.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, cur, tgt, autojunk=False)
    regions = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if not regions or len(regions) > MAX_EDIT_REGIONS or matcher.ratio() < MIN_SIMILARITY:
        return None
    _, i1, i2, j1, j2 = regions[0]
    new = "".join(tgt[j1:j2])
    for before in range(MAX_CONTEXT_LINES + 1):
        for after in (before, before + 1):
            lo, hi = max(0, i1 - before), min(len(cur), i2 + after)
            search = "".join(cur[lo:hi])
            if search and current.count(search) == 1:
                # Context lines are kept as they are now; later regions are left for later ticks.
                replace = "".join(cur[lo:i1]) + new + "".join(cur[i2:hi])
                return {"name": "SYS_EDIT", "path": path, "search": search, "replace": replace}
    return None


def file_op(ws: Workspace, path: str, target: str | None) -> Op | None:
    """The next op that brings `path` to `target` (None: the file must not exist); None when it is there."""
    current = read_file(ws, path)
    if target is None:
        return remove_op([path]) if current is not None or is_blocked(ws, path) else None
    if current == target:
        return None
    if is_blocked(ws, path):
        return remove_op([path])
    if current:
        edit = _region_edit(path, current, target)
        if edit is not None:
            return edit
    return write_op(path, target)


def prepared_texts(prepare: Callable[[Path, int], None]) -> dict[str, str]:
    """The text files of a fresh workspace, exactly as the task prepares one (seed 0), read in a scratch
    folder; files that are not UTF-8 text are left out (no ISA op could restore them)."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bloodwork-expert-") as tmp:
        root = Path(tmp) / "workspace"
        root.mkdir()
        prepare(root, 0)
        for rel in tree_files(root):
            try:
                out[rel] = (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
    return out


def tree_files(root: Path, skip_dirs: frozenset[str] = frozenset({".git", "__pycache__", ".pytest_cache"})
               ) -> list[str]:
    """Every regular file under `root`, relative, sorted; caches and git metadata left out."""
    found: list[str] = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        base = Path(here).relative_to(root)
        found += [str(base / f) if str(base) != "." else f for f in files if not f.endswith(".pyc")]
    return sorted(found)
