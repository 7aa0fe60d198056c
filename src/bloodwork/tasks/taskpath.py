"""The task path: folders of the user's own tasks, found by id like the built-ins.

`BLOODWORK_TASK_PATH` lists folders (separated by `:`). Each holds task folders, directly or one
level down: a repo-fix folder written by `bloodwork tasks import` (`instance.yaml` + its base
archive) is the task `repo-fix/<instance_id>`; a folder with a `task.yaml` is the task its `id:` names.
So after `bloodwork tasks import rows.jsonl --repo-dir REPO --out mytasks`, with
`BLOODWORK_TASK_PATH=mytasks`, `bloodwork run repo-fix/ID` and `bloodwork tasks validate ID` work
from anywhere, and the folder can be moved as long as the path follows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bloodwork.tasks.repofix.instance import INSTANCE_FILE

TASK_PATH_ENV = "BLOODWORK_TASK_PATH"


def task_path() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(TASK_PATH_ENV, "").split(os.pathsep) if p.strip()]


def _id_of(folder: Path) -> str | None:
    """The task id a folder defines (None when it defines none or cannot be read: it is skipped)."""
    for name, prefix, key in ((INSTANCE_FILE, "repo-fix/", "instance_id"), ("task.yaml", "", "id")):
        path = folder / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                return None
            value = data.get(key) if isinstance(data, dict) else None
            return f"{prefix}{value}" if isinstance(value, str) and value else None
    return None


def user_tasks() -> dict[str, Path]:
    """Task id -> folder, for every task on the task path (the first folder of an id wins)."""
    found: dict[str, Path] = {}
    for root in task_path():
        if not root.is_dir():
            continue
        # Hidden folders are skipped: `tasks import` stages its folders in `.import-*` until all rows pass.
        for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       *sorted(p for p in root.glob("*/*") if p.is_dir() and not p.parent.name.startswith("."))]:
            task_id = _id_of(folder)
            if task_id is not None:
                found.setdefault(task_id, folder)
    return found


def find_user_task(task_id: str) -> Path | None:
    return user_tasks().get(task_id)
