"""Ops tasks: keep a real service up through a hidden fault (`ops-blindbox/<scenario>`)."""

from bloodwork.tasks.ops.task import (
    PORT,
    OpsTask,
    Scenario,
    inject_tick_for,
    load_scenario,
    scenario_names,
    sentinels_for,
)

__all__ = ["PORT", "OpsTask", "Scenario", "inject_tick_for", "load_scenario", "scenario_names",
           "sentinels_for"]
