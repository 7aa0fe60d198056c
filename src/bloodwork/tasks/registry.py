"""Finding tasks: built-in names (`long-haul/ledger`) or a path to a task folder."""

from __future__ import annotations

from pathlib import Path

from bloodwork.tasks.base import Task, TaskError
from bloodwork.tasks.folder import FolderTask

BUILTIN = Path(__file__).with_name("builtin")


def builtin_task_dirs() -> list[Path]:
    return sorted(p.parent for p in BUILTIN.glob("*/*/task.yaml"))


def list_tasks() -> list[Task]:
    return [load_task(str(d.relative_to(BUILTIN))) for d in builtin_task_dirs()]


def load_task(name: str) -> Task:
    """A built-in task by id, or a task folder by path."""
    builtin = BUILTIN / name
    if (builtin / "task.yaml").is_file():
        return FolderTask(builtin)
    path = Path(name)
    if path.is_dir():
        return FolderTask(path)
    known = ", ".join(str(d.relative_to(BUILTIN)) for d in builtin_task_dirs())
    raise TaskError(f"unknown task {name!r} (built-in: {known or 'none'}; or give a task folder)")
