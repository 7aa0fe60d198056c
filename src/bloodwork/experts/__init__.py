"""Reference policies of the built-in task families, spec'd as oracles: `expert:TASK`.

`expert:long-haul/ledger`, `expert:repo-fix/<instance>`, `expert:ops-blindbox/<scenario>` (and a task
folder with a `solution/`, or a repo-fix instance file, by path). See `experts.base` for the contract.
"""

from __future__ import annotations

from bloodwork.experts.base import Decision, ExpertOracle, Policy, State
from bloodwork.oracles.base import OracleConfigError

__all__ = ["Decision", "ExpertOracle", "Policy", "State", "make_expert", "make_policy"]


def make_policy(task_name: str) -> Policy:
    """The reference policy of the task `load_task(task_name)` names; OracleConfigError if it has none."""
    from bloodwork.tasks.base import TaskError
    from bloodwork.tasks.folder import FolderTask
    from bloodwork.tasks.ops import OpsTask
    from bloodwork.tasks.registry import load_task
    from bloodwork.tasks.repofix import RepoFixTask

    try:
        task = load_task(task_name)
    except TaskError as err:
        raise OracleConfigError(f"expert:{task_name}: {err}") from err
    if isinstance(task, FolderTask):
        from bloodwork.experts.long_haul import LongHaulPolicy

        return LongHaulPolicy(task)
    if isinstance(task, RepoFixTask):
        from bloodwork.experts.repo_fix import RepoFixPolicy

        return RepoFixPolicy(task)
    if isinstance(task, OpsTask):
        from bloodwork.experts.ops import OpsPolicy

        return OpsPolicy(task)
    raise OracleConfigError(f"expert:{task_name}: no reference policy for a {type(task).__name__}")


def make_expert(spec: str, task_name: str) -> ExpertOracle:
    return ExpertOracle(spec, make_policy(task_name))
