"""Model spec strings -> oracles. Heavy backends are imported only when their spec is used."""

from __future__ import annotations

from bloodwork.oracles.base import Oracle, OracleConfigError

SPEC_HELP = ("local:smollm2[+constrained][+float32][+lora=PATH], openai:MODEL, gemini:MODEL, kimi:MODEL, "
             "scripted:FILE, replay:RUN_DIR, expert:TASK")


def make_oracle(spec: str, **options: object) -> Oracle:
    """Build the backend a spec names; raise OracleConfigError with one readable line if it can't."""
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise OracleConfigError(f"unknown model spec {spec!r} (expected one of: {SPEC_HELP})")
    if scheme == "scripted":
        from bloodwork.oracles.scripted import ScriptedOracle

        return ScriptedOracle(spec, rest)
    if scheme == "replay":
        from bloodwork.oracles.replay import ReplayOracle

        return ReplayOracle(spec, rest)
    if scheme == "expert":
        # A task's reference policy (bloodwork.experts): reads the run's workspace, tagged `provenance: expert`.
        from bloodwork.experts import make_expert

        return make_expert(spec, rest)
    if scheme == "local":
        from bloodwork.oracles.local import make_local_oracle

        return make_local_oracle(spec, rest, **options)
    if scheme in ("openai", "gemini", "kimi"):
        from bloodwork.oracles.openai_compat import OpenAICompatOracle

        return OpenAICompatOracle(spec, scheme, rest, **options)
    raise OracleConfigError(f"unknown model spec {spec!r} (expected one of: {SPEC_HELP})")
