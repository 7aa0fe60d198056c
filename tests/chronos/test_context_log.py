"""The stored context rebuilds exactly the messages the model received, under every policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloodwork.chronos.context_log import messages_at

POLICY = '''
import json
from pathlib import Path

def policy(call, messages):
    Path({dump!r}, f"{{call.tick}}.json").write_text(json.dumps(messages))
    t = call.tick
    if t % 7 == 3:
        return "not a frame"
    op = {{"name": "SYS_EXEC", "cmd": f"echo step {{t}}; seq {{t * 20}}"}} if t % 2 else \\
        {{"name": "SYS_READ", "path": ["a.txt", "b.txt", "sub/c.txt"][t % 3]}}
    return json.dumps({{"thought": f"t{{t}}", "q_next": f"note {{t}} " * (t % 5), "op": op}})
'''


@pytest.mark.parametrize("policy", ["pinned", "window", "masked", "unbounded"])
def test_messages_at_rebuilds_what_was_sent(runner, tmp_path: Path, policy):
    dump = tmp_path / f"sent-{policy}"
    dump.mkdir()
    script = tmp_path / f"policy_{policy}.py"
    script.write_text(POLICY.format(dump=str(dump)))
    ticks = 24
    _, paths = runner.run(str(script), run_id=policy, max_ticks=ticks, panic_budget=50,
                          context={"policy": policy, "budget_tokens": 700, "window": 4},
                          traps={"thrash_idle_ticks": 100, "watchdog_repeats": 100})
    for tick in range(ticks):
        sent = json.loads((dump / f"{tick}.json").read_text())
        assert messages_at(paths.context, tick) == sent, f"tick {tick}"
