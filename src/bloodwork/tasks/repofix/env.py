"""An environment per instance: the interpreter the hidden tests and the agent's commands run with.

Built once and cached by (repo, version, requirements hash) under `$BLOODWORK_CACHE/envs` (else
`~/.cache/bloodwork/envs`), the way SWE-bench keeps one environment per repository and version:

1. a virtual environment on the instance's `python` (default: the interpreter bloodwork runs on);
2. the project installed from its base tree with its dependencies (or the instance's own `install`
   command, run in a copy of the base tree), plus its test requirements: the requirements file named
   by `packages` and the `pip_packages` (pytest when none of them names it);
3. the project's own modules removed again, its metadata (version, entry points) kept. The only copy
   of the project Python can import is then the checkout's, put first by PYTHONPATH (`pythonpath`,
   by default `src` for a src layout, else the tree's root): a wrong import path fails loudly instead
   of silently testing the released code (a src-layout project also installed in bloodwork's own
   environment, such as click, used to be shadowed that way).

The installer is uv (`uv venv` + `uv pip install`), with pip as the measured alternative
(`bench/repofix_env.py`). `env.json`, written last, marks a finished environment and records what
was installed (`pip freeze`); a build that failed half-way is thrown away and redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bloodwork.manifold.toolchain import Toolchain
from bloodwork.slug import slug
from bloodwork.tasks.repofix.instance import InstanceError, RepoFixInstance
from bloodwork.tasks.repofix.sources import cache_root

INSTALLER_ENV = "BLOODWORK_ENV_INSTALLER"
FORMAT = 1  # bump when the way environments are built changes: old ones are then rebuilt
Installer = Literal["uv", "pip"]
BUILD_TIMEOUT_S = 900
_PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")

# Run with the environment's own interpreter: finds the distribution installed from the project copy
# (its PEP 610 direct_url.json) and deletes its files except the metadata and console scripts.
_STRIP = r"""
import importlib.metadata as md, json, os, sys
from pathlib import Path
project, prefix = Path(sys.argv[1]).resolve(), Path(sys.prefix).resolve()
out = []
for dist in md.distributions():
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
        continue
    if url.rstrip("/") != project.as_uri():
        continue
    removed = []
    for rel in dist.files or []:
        path = Path(dist.locate_file(rel)).resolve()
        top = rel.parts[0] if rel.parts else ""
        if top.endswith((".dist-info", ".egg-info")) or path.parent == prefix / "bin" or not path.is_file():
            continue
        path.unlink()
        removed.append(str(rel))
        parent = path.parent
        while parent != prefix and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    out.append({"name": dist.metadata["Name"], "version": dist.version, "removed": len(removed)})
print(json.dumps(out))
"""


class EnvError(InstanceError):
    """An instance's environment cannot be built (no such interpreter, an install that fails)."""


def default_installer() -> Installer:
    chosen = os.environ.get(INSTALLER_ENV, "uv")
    if chosen not in ("uv", "pip"):
        raise EnvError(f"{INSTALLER_ENV}={chosen!r}: expected uv or pip")
    return "pip" if chosen == "pip" else "uv"


@dataclass(frozen=True)
class Interpreter:
    executable: str
    base_prefix: str
    version: str  # major.minor.micro


def _probe(exe: str) -> Interpreter | None:
    code = "import sys; print(sys.executable); print(sys.base_prefix); print('%d.%d.%d' % sys.version_info[:3])"
    try:
        res = subprocess.run([exe, "-I", "-c", code], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = res.stdout.split("\n")
    if res.returncode != 0 or len(lines) < 3:
        return None
    return Interpreter(executable=os.path.realpath(lines[0]), base_prefix=os.path.realpath(lines[1]),
                       version=lines[2])


def find_python(version: str | None) -> Interpreter:
    """The interpreter an instance asks for (`3.9`), or bloodwork's own base interpreter."""
    ours = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if version is None:
        found = _probe(str(ours))
        if found is None:
            raise EnvError(f"cannot run bloodwork's own interpreter {ours}")
        return found
    candidates = [ours.with_name(f"python{version}"), *(Path(d) / f"python{version}"
                                                         for d in os.environ.get("PATH", "").split(os.pathsep) if d)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(pyenv.glob(f"{version}*/bin/python{version}"), reverse=True)
    for exe in candidates:
        if exe.is_file() and (found := _probe(str(exe))) and found.version.startswith(f"{version}."):
            return found
    raise EnvError(f"python {version}: no such interpreter here (looked on PATH and in {pyenv})")


def installable(tree: Path) -> bool:
    return any((tree / name).is_file() for name in _PROJECT_FILES)


def env_spec(inst: RepoFixInstance, base: Path, interpreter: Interpreter) -> dict[str, Any]:
    """Everything that decides what the environment holds; its hash names the cache folder."""
    requirements = None
    if inst.packages:
        path = base / inst.packages
        if not path.is_file():
            raise EnvError(f"{inst.instance_id}: packages: {inst.packages} is not a file of the base tree")
        requirements = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"format": FORMAT, "repo": inst.repo, "version": inst.version, "python": interpreter.version,
            "install": inst.install if inst.install is not None else ("project" if installable(base) else "none"),
            "packages": inst.packages, "packages_sha256": requirements, "pip_packages": test_requirements(inst)}


def test_requirements(inst: RepoFixInstance) -> list[str]:
    named = [re.split(r"[\s<>=!~;\[@]", p.strip(), maxsplit=1)[0].lower() for p in inst.pip_packages]
    return [*inst.pip_packages, *([] if "pytest" in named else ["pytest"])]


@dataclass(frozen=True)
class InstanceEnv:
    """A finished environment: its folder, venv and what `env.json` says about it."""

    root: Path
    info: dict[str, Any]

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def toolchain(self, pythonpath: list[str] | None = None, env: dict[str, str] | None = None) -> Toolchain:
        """What the sandbox needs: the venv's bin first on PATH, the venv and its base interpreter visible."""
        prefixes = sorted({str(self.venv), self.info["interpreter"]["base_prefix"]})
        return Toolchain(bin_dir=str(self.venv / "bin"), prefixes=tuple(prefixes),
                         env={"VIRTUAL_ENV": str(self.venv), **(env or {})}, pythonpath=tuple(pythonpath or ()))

    def summary(self) -> dict[str, Any]:
        keep = ("key", "python", "installer", "build_s", "project", "installed")
        return {k: self.info[k] for k in keep if k in self.info} | {"path": str(self.root)}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per environment at a time (sweep workers preparing the same instance)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired as err:
        raise EnvError(f"{what} timed out after {BUILD_TIMEOUT_S} s") from err
    except OSError as err:
        raise EnvError(f"{what}: cannot run {cmd[0]} ({err.strerror})") from err
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error|fail|not found|no matching|cannot", ln, re.IGNORECASE)]
        why = " | ".join((errors or lines or ["no output"])[-3:])[:600]
        raise EnvError(f"{what} failed (exit {res.returncode}): {why}")
    return res.stdout


def _uv() -> str:
    try:
        import uv
    except ImportError as err:  # a dependency of bloodwork: only a broken install lacks it
        raise EnvError(f"the uv installer is missing ({err}); reinstall bloodwork or set {INSTALLER_ENV}=pip") from err
    return str(uv.find_uv_bin())


def _host_env() -> dict[str, str]:
    """The builder's environment: never download an interpreter, never pick up an active venv or project."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return env | {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _build(inst: RepoFixInstance, base: Path, spec: dict[str, Any], interpreter: Interpreter, root: Path,
           installer: Installer) -> dict[str, Any]:
    start = time.monotonic()
    venv, project = root / "venv", root / "project"
    shutil.copytree(base, project, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    env = _host_env()
    python = str(venv / "bin" / "python")
    seed = inst.install is not None  # a custom install command may call pip itself
    if installer == "uv":
        uv = _uv()
        _run([uv, "venv", "--quiet", "--no-project", *(["--seed"] if seed else []), "--python",
              interpreter.executable, str(venv)], f"{inst.instance_id}: uv venv", env=env)
        install = [uv, "pip", "install", "--quiet", "--python", python]
    else:
        _run([interpreter.executable, "-m", "venv", str(venv)], f"{inst.instance_id}: python -m venv", env=env)
        install = [python, "-m", "pip", "install", "--quiet"]
    active = env | {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"}
    if inst.install is not None:
        _run(["/bin/sh", "-c", inst.install], f"{inst.instance_id}: install command {inst.install!r}", cwd=project,
             env=active)
    targets = ([str(project)] if spec["install"] == "project" else [])
    targets += ["-r", str(project / inst.packages)] if inst.packages else []
    targets += spec["pip_packages"]
    _run([*install, *targets], f"{inst.instance_id}: {installer} install of {' '.join(targets)[:200]}", env=active)
    stripped = json.loads(_run([python, "-I", "-c", _STRIP, str(project)], f"{inst.instance_id}: strip", env=env)
                          or "[]")
    freeze_cmd = ([_uv(), "pip", "freeze", "--python", python] if installer == "uv"
                  else [python, "-m", "pip", "freeze", "--all"])
    installed = [ln for ln in _run(freeze_cmd, f"{inst.instance_id}: freeze", env=env).splitlines() if ln.strip()]
    return {"interpreter": {"executable": interpreter.executable, "base_prefix": interpreter.base_prefix},
            "installer": installer, "build_s": round(time.monotonic() - start, 2), "project": stripped,
            "installed": installed, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _readable_by_all(root: Path) -> None:
    """Let everyone read the environment (and run what its owner may run): the sandbox's commands run as an
    unprivileged uid, and a builder's umask (077, say) would otherwise lock them out of it."""
    for folder, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name, is_dir in [(".", True), *((d, True) for d in dirs), *((f, False) for f in files)]:
            if name == "." and folder != str(root):
                continue  # each folder is handled as an entry of its parent
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                continue
            add = 0o044 | (0o011 if is_dir or st.st_mode & stat.S_IXUSR else 0)
            if st.st_mode & add != add:
                os.chmod(name, stat.S_IMODE(st.st_mode) | add, dir_fd=dir_fd)


def ensure_env(inst: RepoFixInstance, base: Path, *, root: Path | None = None,
               installer: Installer | None = None) -> InstanceEnv:
    """The instance's environment, built from its base tree on first use (minutes at most), then cached."""
    interpreter = find_python(inst.python)
    spec = env_spec(inst, base, interpreter)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    repo, version = (slug(part, 40, keep=".") or "x" for part in (inst.repo, inst.version))
    key = f"{repo}-{version}-py{interpreter.version}-{digest}"
    folder = (root or cache_root() / "envs") / key
    stamp = folder / "env.json"
    with _locked(folder.with_name(f".{key}.lock")):
        if stamp.is_file():
            return InstanceEnv(folder, json.loads(stamp.read_text()))
        if folder.exists():  # a build that died half-way
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        try:
            info = {"key": key, "python": interpreter.version, "spec": spec,
                    **_build(inst, base, spec, interpreter, folder, installer or default_installer())}
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _readable_by_all(folder)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, stamp)
    return InstanceEnv(folder, info)
