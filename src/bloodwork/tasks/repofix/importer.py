"""`bloodwork tasks import`: SWE-bench-style JSONL rows into self-contained task folders.

Each row becomes `OUT/<instance_id>/` holding `instance.yaml` and `base.tar.gz`, the base commit's
tree (no history) pinned by sha256, so the folder runs without the checkout it came from and can be
moved, shared or committed. Before anything is written, every row is checked:

- its fields (the ones bloodwork uses are kept and validated; the others are reported as ignored);
- its base commit exists in the checkout (a checkout git refuses, e.g. for dubious ownership, is
  reported as such);
- every FAIL_TO_PASS and PASS_TO_PASS id is collected by pytest in the instance's own environment,
  on the base tree with the gold patch and the hidden tests; each id that is not is named.

A file with any bad row is refused whole; nothing is half-written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bloodwork.manifold.runner import CommandRunner, SandboxKind
from bloodwork.tasks.hidden_tests import verifier_mounts
from bloodwork.tasks.repofix.env import ensure_env
from bloodwork.tasks.repofix.instance import (
    INSTANCE_FILE,
    BaseArchive,
    InstanceError,
    RepoFixInstance,
    load_instance_file,
    parse_instance,
    write_instance,
)
from bloodwork.tasks.repofix.sources import git_refusal, git_tar, materialize
from bloodwork.tasks.repofix.validate import build_tree, collect

BASE_ARCHIVE = "base.tar.gz"
# What a row may carry, by what becomes of it. `IMPORTED` are RepoFixInstance fields, kept and validated.
REQUIRED = ("instance_id", "repo", "base_commit", "problem_statement", "FAIL_TO_PASS", "patch", "test_patch")
OPTIONAL = ("version", "PASS_TO_PASS", "upstream", "test_cmd", "test_dir", "env", "timeout_s", "python", "install",
            "packages", "pip_packages", "pythonpath")
IMPORTED = REQUIRED + OPTIONAL
# SWE-bench fields bloodwork has no use for, and fields import sets itself: reported as ignored.
KNOWN_IGNORED = {"hints_text": "hints are not shown to the agent", "created_at": "not used",
                 "environment_setup_commit": "the environment is built from base_commit",
                 "repo_dir": "set from --repo-dir", "base_archive": "written by import",
                 "source_archive": "the base comes from the checkout", "fix_release": "the fix comes from `patch`",
                 "bug": "an imported bug is real"}


@dataclass
class ImportedInstance:
    instance_id: str
    folder: Path
    warnings: list[str] = field(default_factory=list)
    collected: int = 0
    environment: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Row:
    where: str
    inst: RepoFixInstance
    warnings: list[str]


def _git_checkout(repo_dir: Path) -> None:
    res = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "--git-dir"], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise InstanceError(git_refusal(repo_dir, res.stderr) or f"{repo_dir}: git cannot read it ({why})")


def _check_commit(repo_dir: Path, commit: str, where: str) -> None:
    res = subprocess.run(["git", "-C", str(repo_dir), "cat-file", "-e", f"{commit}^{{commit}}"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        refusal = git_refusal(repo_dir, res.stderr)
        raise InstanceError(f"{where}: {refusal or f'base_commit {commit} is not in {repo_dir}'}")


def read_rows(jsonl_path: Path, repo_dir: Path) -> list[_Row]:
    """Every row parsed and checked against the checkout; the first bad one raises `FILE:LINE: why`."""
    repo_dir = repo_dir.resolve()
    _git_checkout(repo_dir)
    try:
        lines = jsonl_path.read_text().splitlines()
    except OSError as err:
        raise InstanceError(f"{jsonl_path}: cannot read ({err.strerror})") from err
    rows: list[_Row] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{jsonl_path}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InstanceError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise InstanceError(f"{where}: a line must be a JSON object")
        absent = [k for k in REQUIRED if k not in row]
        if absent:
            raise InstanceError(f"{where}: missing required field(s): {', '.join(absent)}")
        data = {k: row[k] for k in IMPORTED if k in row} | {"repo_dir": str(repo_dir)}
        inst = parse_instance(data, where)
        if inst.instance_id in seen:
            raise InstanceError(f"{where}: instance_id {inst.instance_id!r} appears twice")
        assert inst.base_commit is not None
        _check_commit(repo_dir, inst.base_commit, where)
        seen.add(inst.instance_id)
        ignored = sorted(k for k in row if k not in IMPORTED)
        warnings = [f"{where}: ignored field(s): " + ", ".join(
            f"{k} ({KNOWN_IGNORED.get(k, 'unknown to bloodwork')})" for k in ignored)] if ignored else []
        rows.append(_Row(where, inst, warnings))
    if not rows:
        raise InstanceError(f"{jsonl_path}: no instances")
    return rows


def _write_folder(inst: RepoFixInstance, folder: Path) -> RepoFixInstance:
    """`instance.yaml` + `base.tar.gz` (mtime 0 in the gzip header: the same commit gives the same bytes)."""
    assert inst.repo_dir is not None and inst.base_commit is not None
    folder.mkdir(parents=True)
    data = gzip.compress(git_tar(Path(inst.repo_dir), inst.base_commit), mtime=0)
    (folder / BASE_ARCHIVE).write_bytes(data)
    archive = BaseArchive(path=BASE_ARCHIVE, sha256=hashlib.sha256(data).hexdigest())
    saved = inst.model_copy(update={"repo_dir": None, "base_archive": archive})
    write_instance(saved, folder / INSTANCE_FILE)
    return load_instance_file(folder / INSTANCE_FILE)  # validated as any user would load it


def _not_collected(inst: RepoFixInstance, scratch: Path, sandbox: SandboxKind) -> tuple[list[str], list[str], dict]:
    """(ids pytest does not collect with the gold patch, pytest's error lines, the environment's summary)."""
    mat = materialize(inst, scratch / "src")
    env = ensure_env(inst, mat.base)
    build_tree(mat, scratch / "gold", mat.gold, mat.hidden)
    runner = CommandRunner(scratch, sandbox=sandbox, toolchain=env.toolchain(), mounts=verifier_mounts(sandbox))
    try:
        missing, run = collect(runner, inst, mat, "gold", scratch)
    finally:
        runner.close()
    return missing, (run.errors if run else []), env.summary()


def import_instances(jsonl_path: Path, repo_dir: Path, out: Path, *,
                     sandbox: SandboxKind = "auto") -> list[ImportedInstance]:
    """Check every row, then write one task folder per row under `out` (an existing one is replaced)."""
    rows = read_rows(jsonl_path, repo_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[ImportedInstance] = []
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out) as tmp:
        staging = Path(tmp)
        problems: list[str] = []
        for row in rows:
            folder = staging / row.inst.instance_id
            loaded = _write_folder(row.inst, folder)
            missing, errors, env = _not_collected(loaded, staging / f".check-{row.inst.instance_id}", sandbox)
            if missing:
                problems.append(f"{row.where}: {row.inst.instance_id}: {len(missing)} test id(s) not collected by "
                                f"pytest in the instance's environment: {', '.join(missing)}"
                                + (f" (pytest: {'; '.join(errors[:3])})" if errors else ""))
            done.append(ImportedInstance(row.inst.instance_id, out / row.inst.instance_id, row.warnings,
                                         len(row.inst.hidden_tests) - len(missing), env))
        if problems:
            raise InstanceError("; ".join(problems))
        for item in done:
            if item.folder.exists():
                shutil.rmtree(item.folder)
            (staging / item.instance_id).rename(item.folder)
    return done
