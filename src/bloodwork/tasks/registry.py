"""Finding tasks: built-in names (`long-haul/ledger`, `repo-fix/<instance>`, `ops-blindbox/<scenario>`),
the user's tasks on the task path (`BLOODWORK_TASK_PATH`, see `taskpath.py`) by the same kind of id,
a path to a task folder (`task.yaml`, or an imported repo-fix folder with `instance.yaml`), or a path
to a repo-fix instance file (YAML/JSON)."""

from __future__ import annotations

from pathlib import Path

from bloodwork.tasks.base import Task, TaskError
from bloodwork.tasks.folder import FolderTask
from bloodwork.tasks.ops import OpsTask, load_scenario, scenario_names
from bloodwork.tasks.repofix import (
    RepoFixInstance,
    RepoFixTask,
    builtin_instance,
    builtin_instances,
    load_instance_file,
)
from bloodwork.tasks.repofix.instance import BUILTIN_DIR as REPOFIX_DIR
from bloodwork.tasks.repofix.instance import INSTANCE_FILE
from bloodwork.tasks.taskpath import TASK_PATH_ENV, find_user_task, user_tasks

BUILTIN = Path(__file__).with_name("builtin")


def builtin_task_dirs() -> list[Path]:
    return sorted(p.parent for p in BUILTIN.glob("*/*/task.yaml"))


def list_tasks() -> list[Task]:
    """Every built-in task, then the task path's; building them reads metadata only (no download, no service)."""
    folders: list[Task] = [load_task(str(d.relative_to(BUILTIN))) for d in builtin_task_dirs()]
    repo_fix: list[Task] = [RepoFixTask(inst) for inst in builtin_instances()]
    ops: list[Task] = [OpsTask(load_scenario(name)) for name in scenario_names()]
    builtin = folders + repo_fix + ops
    known = {t.id for t in builtin}
    user = [_from_folder(folder, task_id) for task_id, folder in user_tasks().items() if task_id not in known]
    return builtin + user


def _from_folder(folder: Path, source: str) -> Task:
    task: FolderTask | RepoFixTask = (RepoFixTask(load_instance_file(folder)) if (folder / INSTANCE_FILE).is_file()
                                      else FolderTask(folder))
    task.source = source  # what `load_task` takes to build it again (`resume`, `replay`, `fork`)
    task.metadata["task_folder"] = str(folder.resolve())
    return task


def load_task(name: str) -> Task:
    """A built-in task by id, a task on the task path by id, a task folder by path, or an instance file."""
    builtin = BUILTIN / name
    if (builtin / "task.yaml").is_file():
        task = FolderTask(builtin)
        task.source = name  # a built-in is found by id, wherever this checkout lives
        return task
    family, _, member = name.partition("/")
    if family == "repo-fix" and member and "/" not in member and (REPOFIX_DIR / f"{member}.yaml").is_file():
        return RepoFixTask(builtin_instance(member))
    if family == "ops-blindbox" and member and "/" not in member:
        return OpsTask(load_scenario(member))
    user = find_user_task(name)
    if user is not None:
        return _from_folder(user, name)
    path = Path(name)
    if path.is_dir() and ((path / "task.yaml").is_file() or (path / INSTANCE_FILE).is_file()):
        return _from_folder(path, str(path.resolve()))
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        instance_task = RepoFixTask(load_instance_file(path))
        instance_task.source = str(path.resolve())
        return instance_task
    if family == "repo-fix" and member and "/" not in member:
        try:
            builtin_instance(member)  # raises the error that lists the built-in instances
        except TaskError as err:
            raise TaskError(f"{err}; none on {TASK_PATH_ENV} either") from err
    known = ", ".join(str(d.relative_to(BUILTIN)) for d in builtin_task_dirs())
    raise TaskError(f"unknown task {name!r} (built-in: {known or 'none'}, repo-fix/<instance>, "
                    f"ops-blindbox/<scenario>; tasks on {TASK_PATH_ENV}; or give a task folder or an instance file)")


def find_instance(name: str) -> RepoFixInstance:
    """A repo-fix instance by id (`sqlparse-784` or `repo-fix/sqlparse-784`: built-in, then the task path),
    or by the path of its file or folder."""
    path = Path(name)
    if path.is_file() or (path / INSTANCE_FILE).is_file():
        return load_instance_file(path)
    instance_id = name.removeprefix("repo-fix/")
    if (REPOFIX_DIR / f"{instance_id}.yaml").is_file():
        return builtin_instance(instance_id)
    user = find_user_task(f"repo-fix/{instance_id}")
    if user is not None and (user / INSTANCE_FILE).is_file():
        return load_instance_file(user)
    try:
        return builtin_instance(instance_id)
    except TaskError as err:
        raise TaskError(f"{err}; none on {TASK_PATH_ENV} either") from err
