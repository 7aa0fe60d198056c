"""Finding tasks: built-in names (`long-haul/ledger`, `repo-fix/<instance>`, `ops-blindbox/<scenario>`),
a path to a task folder, or a path to a repo-fix instance file (YAML/JSON, e.g. an imported one)."""

from __future__ import annotations

from pathlib import Path

from bloodwork.tasks.base import Task, TaskError
from bloodwork.tasks.folder import FolderTask
from bloodwork.tasks.ops import OpsTask, load_scenario, scenario_names
from bloodwork.tasks.repofix import RepoFixTask, builtin_instance, builtin_instances, load_instance_file

BUILTIN = Path(__file__).with_name("builtin")


def builtin_task_dirs() -> list[Path]:
    return sorted(p.parent for p in BUILTIN.glob("*/*/task.yaml"))


def list_tasks() -> list[Task]:
    """Every built-in task; building them reads metadata only (no download, no service)."""
    folders: list[Task] = [load_task(str(d.relative_to(BUILTIN))) for d in builtin_task_dirs()]
    repo_fix: list[Task] = [RepoFixTask(inst) for inst in builtin_instances()]
    ops: list[Task] = [OpsTask(load_scenario(name)) for name in scenario_names()]
    return folders + repo_fix + ops


def load_task(name: str) -> Task:
    """A built-in task by id, a task folder by path, or a repo-fix instance file by path."""
    builtin = BUILTIN / name
    if (builtin / "task.yaml").is_file():
        task = FolderTask(builtin)
        task.source = name  # a built-in is found by id, wherever this checkout lives
        return task
    family, _, member = name.partition("/")
    if family == "repo-fix" and member and "/" not in member:
        return RepoFixTask(builtin_instance(member))
    if family == "ops-blindbox" and member and "/" not in member:
        return OpsTask(load_scenario(member))
    path = Path(name)
    if path.is_dir():
        return FolderTask(path)
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        instance_task = RepoFixTask(load_instance_file(path))
        instance_task.source = str(path.resolve())
        return instance_task
    known = ", ".join(str(d.relative_to(BUILTIN)) for d in builtin_task_dirs())
    raise TaskError(f"unknown task {name!r} (built-in: {known or 'none'}, repo-fix/<instance>, "
                    "ops-blindbox/<scenario>; or give a task folder or a repo-fix instance file)")
