"""One kernel config from its layers: a command's defaults < a --config file < the environment < explicit flags,
validated once after the merge, with the layer that set a bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodwork.kernel.config import ConfigError, KernelConfig, load_config


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "kernel.yaml"
    path.write_text("max_ticks: 7\npanic_budget: 9\ncontext: {window: 3, policy: masked}\nprobe_every: 2\n")
    return path


def test_nothing_given_is_the_model_defaults():
    assert load_config(env={}) == KernelConfig()


def test_the_file_overrides_the_commands_defaults(file):
    cfg = load_config(file, defaults={"max_ticks": 60}, env={})
    assert (cfg.max_ticks, cfg.panic_budget, cfg.context.window, cfg.context.policy) == (7, 9, 3, "masked")


def test_the_environment_overrides_the_file(file):
    cfg = load_config(file, env={"BLOODWORK_TICKS": "11", "BLOODWORK_PANIC_BUDGET": "4"})
    assert (cfg.max_ticks, cfg.panic_budget, cfg.probe_every) == (11, 4, 2)


def test_explicit_flags_override_the_environment_and_unset_flags_do_not(file):
    flags = {"max_ticks": 5, "panic_budget": None, "context.policy": "window", "context.budget_tokens": None}
    cfg = load_config(file, flags=flags, env={"BLOODWORK_TICKS": "11", "BLOODWORK_PANIC_BUDGET": "4"})
    assert (cfg.max_ticks, cfg.panic_budget) == (5, 4)
    assert (cfg.context.policy, cfg.context.window, cfg.context.budget_tokens) == ("window", 3, 2048)


@pytest.mark.parametrize(("flags", "env", "needle"), [
    ({"probe_every": -1}, {}, "probe_every: Input should be greater than or equal to 0 (set by the command line)"),
    ({}, {"BLOODWORK_TICKS": "many"}, "max_ticks: Input should be a valid integer"),
    ({}, {"BLOODWORK_PANIC_BUDGET": "0"}, "(set by $BLOODWORK_PANIC_BUDGET)"),
    ({"context.budget_tokens": 5}, {}, "context.budget_tokens: Input should be greater than or equal to 256"),
])
def test_every_layer_is_validated_and_named(flags, env, needle):
    with pytest.raises(ConfigError) as err:
        load_config(flags=flags, env=env)
    assert needle in str(err.value)


def test_a_bad_file_value_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("traps: {panic_streak: 0}\n")
    with pytest.raises(ConfigError, match=r"traps.panic_streak: .*set by --config .*bad.yaml"):
        load_config(path, env={})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.yaml", env={})
