"""The reference policy of an ops scenario: watch, diagnose, apply the scenario's remedy, confirm, halt.

It is data-driven: the remedy is the scenario's `repair:` text (`{port}` filled in), so a new scenario
file works without code. Remedies of the other scenarios follow as fallbacks, for states a student
left with more broken than the fault did (a stopped service, a rewritten config). Every command ends
with the service's own status check, so its exit code says whether the service is healthy, and the
policy decides from exit codes (which survive a flooded output) and nothing else:

- a slice that is not one of its own commands (the start, a trap, a panic, a student's command): check;
- a check: healthy -> SYS_HALT once the fault must have struck (after tick `INJECT_LAST`; a halt before
  the fault is refused), else keep watching; failing -> diagnose;
- the diagnosis: failing -> the first remedy; healthy -> as a check;
- a remedy: healthy -> SYS_HALT; failing -> the next remedy (after the last one, diagnose again);
  timed out -> the same remedy again.

A check names its tick in the command, so watching is never the same action twice.
"""

from __future__ import annotations

import re
from typing import Any

from bloodwork.experts.base import Decision, State, halt
from bloodwork.experts.edits import exec_op
from bloodwork.experts.observe import exec_view
from bloodwork.tasks.ops import OpsTask, Scenario, load_scenario, scenario_names
from bloodwork.tasks.ops.task import INJECT_LAST

STATUS = "./service/status.sh"
DIAGNOSE = (f"{STATUS}; s=$?; echo '--- log'; tail -n 5 logs/service.log | cut -c1-160; echo '--- data'; "
            "ls -l data; echo '--- config'; cat service/config.json; echo; exit $s")
_CHECK = re.compile(r"^echo 'check at tick \d+'; \./service/status\.sh$")


def check_cmd(tick: int) -> str:
    return f"echo 'check at tick {tick}'; {STATUS}"


def remedy_cmd(scenario: Scenario, port: int) -> str:
    return f"{scenario.repair.replace('{port}', str(port)).rstrip()}\necho '--- check'; {STATUS}"


class OpsPolicy:
    def __init__(self, task: OpsTask) -> None:
        self.task_id = task.id
        self.goal = task.goal
        self.scenario = task.scenario
        others = [load_scenario(name) for name in scenario_names() if name != task.scenario.id]
        self.remedies = [(s.id, remedy_cmd(s, task.port)) for s in [task.scenario, *others]]

    def _watch(self, state: State, why: str) -> Decision:
        return Decision(why, "watching the service", exec_op(check_cmd(state.tick)))

    def _healthy(self, state: State) -> Decision:
        if state.tick > INJECT_LAST:
            return halt("The service is healthy and the fault has had its time to strike.",
                        "the service answers its health check again, on its port, with its data")
        return self._watch(state, "Healthy; the fault may still come: keep watching.")

    def decide(self, state: State) -> Decision:
        seen = exec_view(state.last.slice)
        if seen is None:
            return self._watch(state, "Check the service.")
        for i, (name, cmd) in enumerate(self.remedies):
            if seen.cmd != cmd:
                continue
            if seen.timed_out:
                return Decision("The remedy timed out before it finished; run it again.",
                                f"remedy {name}: again", exec_op(cmd))
            if seen.exit_code == 0:
                return halt(f"After the remedy for {name} the service is healthy again.",
                            f"repaired ({name}); the service answers its health check with its data")
            if i + 1 < len(self.remedies):
                nxt, nxt_cmd = self.remedies[i + 1]
                return Decision(f"Still failing after the remedy for {name}; try the remedy for {nxt}.",
                                f"remedy {name} failed; trying {nxt}", exec_op(nxt_cmd))
            return Decision("No remedy worked; collect the evidence again.", "diagnosing again", exec_op(DIAGNOSE))
        if seen.cmd == DIAGNOSE and not seen.timed_out:
            if seen.exit_code == 0:
                return self._healthy(state)
            name, cmd = self.remedies[0]
            return Decision(f"The service is failing. Known fault: {self.scenario.title}; apply its remedy.",
                            f"diagnosed {name}; repairing", exec_op(cmd))
        if _CHECK.match(seen.cmd) and not seen.timed_out:
            if seen.exit_code == 0:
                return self._healthy(state)
            return Decision("The check failed: collect status, log, data and config.", "service failing; diagnosing",
                            exec_op(DIAGNOSE))
        return self._watch(state, "Check the service.")

    def describe(self) -> dict[str, Any]:
        return {"policy": "ops", "reference": f"scenario {self.scenario.id}: its repair text",
                "remedies": [name for name, _ in self.remedies]}

    def close(self) -> None:
        return None
