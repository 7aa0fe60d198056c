"""Which interpreter a sandbox's commands get, when a task brings its own (a repo-fix instance's environment).

By default the commands in the sandbox find bloodwork's own interpreter first on PATH. A task that
needs another one (a virtual environment with a project's dependencies) hands the runner a
`Toolchain`: its `bin` directory goes first on PATH, its prefixes are mounted read-only, its
variables are set, and `pythonpath` (folders relative to the workspace) becomes PYTHONPATH as the
commands see the workspace (`/ws/src` inside bwrap, the real path without it). The command server
itself keeps running on bloodwork's interpreter.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Toolchain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bin_dir: str = Field(description="absolute; first on PATH (its `python3`, `python`, `pytest`)")
    prefixes: tuple[str, ...] = Field(default=(), description="absolute folders mounted read-only in the sandbox")
    env: dict[str, str] = Field(default_factory=dict, description="extra variables, set as given")
    pythonpath: tuple[str, ...] = Field(default=(), description="folders relative to the workspace")

    def variables(self, workspace: str) -> dict[str, str]:
        """PATH, PYTHONPATH and the extra variables, for a workspace seen at `workspace`."""
        out = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", **self.env}
        if self.pythonpath:
            out["PYTHONPATH"] = ":".join(workspace if p in ("", ".") else f"{workspace}/{p}"
                                         for p in self.pythonpath)
        return out
