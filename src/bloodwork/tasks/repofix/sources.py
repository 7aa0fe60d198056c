"""Where an instance's code comes from, and the trees the task and its verifier work on.

Source archives are fetched once with `pip download --no-deps --no-binary :all:` into a cache
(`$BLOODWORK_CACHE/sdists`, else `~/.cache/bloodwork/sdists`) and checked against their pinned
sha256 on every use, so after the first preparation everything works offline and a changed archive
is refused rather than silently used.

`materialize` turns an instance into three things: the pristine base tree, the hidden test files
(path -> bytes, None for a deletion) and the gold files (the same, for the fix). Hidden tests and the
fix are kept as whole files, not patches, so the verifier only ever copies files into its copy of the
agent's workspace and never runs a patch tool over files the agent controls.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bloodwork.chronos.files import sha256_file
from bloodwork.tasks.repofix.instance import InstanceError, RepoFixInstance, SdistRef

CACHE_ENV = "BLOODWORK_CACHE"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "bloodwork", "GIT_AUTHOR_EMAIL": "bloodwork@localhost",
                "GIT_COMMITTER_NAME": "bloodwork", "GIT_COMMITTER_EMAIL": "bloodwork@localhost",
                "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z"}
# Byte-compiled files and caches are never part of a tree we compare or commit.
IGNORED = ("__pycache__", "*.pyc", ".pytest_cache")


class SourceError(InstanceError):
    """A source archive cannot be fetched, does not match its sha256, or a patch does not apply."""


def cache_root() -> Path:
    """Where sdists and instance environments are kept: `$BLOODWORK_CACHE`, else ~/.cache/bloodwork."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "bloodwork"


def cache_dir() -> Path:
    return cache_root() / "sdists"


def _cached(ref: SdistRef, folder: Path) -> Path | None:
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.is_file() and sha256_file(path) == ref.sha256:
            return path
    return None


def fetch_sdist(ref: SdistRef, cache: Path | None = None) -> Path:
    """The archive for `ref`, from the cache or downloaded into it (sha256 checked either way)."""
    folder = (cache or cache_dir()) / ref.name / ref.version
    hit = _cached(ref, folder)
    if hit is not None:
        return hit
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, ref.spec]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired as err:
            raise SourceError(f"pip download {ref.spec} timed out after 600 s") from err
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if res.returncode != 0 or len(files) != 1:
            why = (res.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
            raise SourceError(f"cannot download {ref.spec} (not cached in {folder}): {why}")
        got = sha256_file(files[0])
        if got != ref.sha256:
            raise SourceError(f"{files[0].name}: sha256 {got} does not match the pinned {ref.sha256}")
        final = folder / files[0].name
        os.replace(files[0], final)
    return final


def _strip_top(names: list[str]) -> str:
    tops = {n.split("/", 1)[0] for n in names if n.strip("/")}
    return tops.pop() + "/" if len(tops) == 1 else ""


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack an sdist into `dest` without its single top-level folder (`name-version/`)."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            prefix = _strip_top(zf.namelist())
            for info in zf.infolist():
                rel = info.filename[len(prefix):]
                target = (dest / rel).resolve()
                if not rel or info.is_dir() or dest.resolve() not in target.parents:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
        return
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        prefix = _strip_top([m.name for m in members])
        keep = []
        for m in members:
            if m.name.startswith(prefix) and m.name != prefix.rstrip("/"):
                m.name = m.name[len(prefix):]
                keep.append(m)
        tf.extractall(dest, members=keep, filter="data")


def _git(args: list[str], cwd: Path, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """git confined to `cwd`: it never discovers a repository above it (GIT_CEILING_DIRECTORIES)."""
    env = {**os.environ, **GIT_IDENTITY, "GIT_CEILING_DIRECTORIES": str(cwd.resolve().parent)}
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, env=env, check=False)


def patch_paths(patch: str) -> list[str]:
    """Every file a unified diff touches (its `---`/`+++` sides, `a/`/`b/` prefixes removed)."""
    paths: list[str] = []
    for line in patch.splitlines():
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t", 1)[0].strip()
            if name == "/dev/null":
                continue
            if name.startswith(("a/", "b/")):
                name = name[2:]
            if name not in paths:
                paths.append(name)
    return paths


def apply_patch(tree: Path, patch: str, *, reverse: bool = False, what: str = "patch") -> None:
    """Apply a unified diff to a tree we own (never the agent's)."""
    args = ["apply", "--whitespace=nowarn", *(["-R"] if reverse else []), "-"]
    res = _git(args, tree, stdin=patch.encode())
    if res.returncode != 0:
        why = (res.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[0]
        raise SourceError(f"{what} does not apply{' in reverse' if reverse else ''}: {why}")


def _read_files(tree: Path, paths: list[str]) -> dict[str, bytes | None]:
    return {p: (tree / p).read_bytes() if (tree / p).is_file() else None for p in paths}


def git_refusal(repo_dir: Path, stderr: str) -> str | None:
    """git's own reason for refusing a checkout, when it is not about the commit (ownership, not a repo)."""
    if "dubious ownership" in stderr:
        return (f"git refuses {repo_dir}: dubious ownership (it belongs to another user); run git as its owner "
                f"or trust it with `git config --global --add safe.directory {repo_dir}`")
    if "not a git repository" in stderr:
        return f"{repo_dir}: not a git checkout"
    return None


def git_tar(repo_dir: Path, commit: str) -> bytes:
    """The tree of `commit` as a tar archive (no history, no .git)."""
    res = subprocess.run(["git", "-C", str(repo_dir), "archive", "--format=tar", commit], capture_output=True,
                         check=False)
    if res.returncode != 0:
        stderr = res.stderr.decode(errors="replace")
        why = (stderr.strip().splitlines() or ["unknown error"])[0]
        raise SourceError(git_refusal(repo_dir, stderr) or f"git archive {commit} in {repo_dir} failed: {why}")
    return res.stdout


def _extract_tar_bytes(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")


def _base_archive(inst: RepoFixInstance, dest: Path) -> None:
    """The tree stored next to the instance file, after checking its sha256."""
    assert inst.base_archive is not None
    if inst.folder is None:
        raise SourceError(f"{inst.instance_id}: base_archive {inst.base_archive.path} is relative to the instance "
                          "file, and this instance was not loaded from one")
    path = inst.folder / inst.base_archive.path
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SourceError(f"{inst.instance_id}: cannot read the base archive {path} ({err.strerror})") from err
    got = hashlib.sha256(data).hexdigest()
    if got != inst.base_archive.sha256:
        raise SourceError(f"{path}: sha256 {got} does not match the pinned {inst.base_archive.sha256}")
    try:
        _extract_tar_bytes(data, dest)
    except (tarfile.TarError, OSError) as err:
        raise SourceError(f"{path}: not a readable tar archive ({err})") from err


def import_roots(tree: Path) -> list[str]:
    """Where a project's code is imported from: `src` for a src layout, else the tree's root."""
    src = tree / "src"
    if src.is_dir() and any((p / "__init__.py").is_file() or (p.suffix == ".py" and p.is_file())
                            for p in src.iterdir()):
        return ["src"]
    return ["."]


@dataclass
class Materialized:
    """The trees of one instance: `base` on disk, hidden tests and fix as path -> bytes (None: delete),
    and the folders (relative to a tree's root) that go first on PYTHONPATH."""

    base: Path
    hidden: dict[str, bytes | None] = field(default_factory=dict)
    gold: dict[str, bytes | None] = field(default_factory=dict)
    pythonpath: list[str] = field(default_factory=lambda: ["."])

    def pythonpath_prefix(self) -> str:
        """`PYTHONPATH=... ` for a command that runs at a tree's root (`$PWD` is expanded there)."""
        return 'PYTHONPATH="' + ":".join("$PWD" if p == "." else f"$PWD/{p}" for p in self.pythonpath) + '" '


def _overlay_of(base: Path, patch: str, scratch: Path, what: str) -> dict[str, bytes | None]:
    """The files a patch produces from `base`, computed in a scratch copy."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(base, scratch, symlinks=True)
    apply_patch(scratch, patch, what=what)
    return _read_files(scratch, patch_paths(patch))


def materialize(inst: RepoFixInstance, workdir: Path, cache: Path | None = None) -> Materialized:
    """Build the base tree under `workdir/base` and compute the hidden and gold overlays."""
    base = workdir / "base"
    if base.exists():
        shutil.rmtree(base)
    if inst.source_archive is not None:
        extract_archive(fetch_sdist(inst.source_archive, cache), base)
    elif inst.base_archive is not None:
        _base_archive(inst, base)
    else:
        assert inst.repo_dir is not None and inst.base_commit is not None
        _extract_tar_bytes(git_tar(Path(inst.repo_dir), inst.base_commit), base)

    if inst.fix_release is not None:
        fixed = workdir / "fix-release"
        if fixed.exists():
            shutil.rmtree(fixed)
        extract_archive(fetch_sdist(inst.fix_release.sdist, cache), fixed)
        for rel in inst.fix_release.patch_files + inst.fix_release.test_files:
            if not (fixed / rel).is_file() and not (base / rel).is_file():
                raise SourceError(f"{inst.instance_id}: {rel} is in neither the base nor {inst.fix_release.sdist.spec}")
        gold = _read_files(fixed, inst.fix_release.patch_files)
        hidden = _read_files(fixed, inst.fix_release.test_files)
        shutil.rmtree(fixed)
        return Materialized(base=base, hidden=hidden, gold=gold, pythonpath=inst.pythonpath or import_roots(base))

    if inst.bug == "injected":
        # The release is the fixed code: the base is the release with the gold patch taken out.
        gold = _read_files(base, patch_paths(inst.patch))
        apply_patch(base, inst.patch, reverse=True, what=f"{inst.instance_id}: patch")
    else:
        gold = _overlay_of(base, inst.patch, workdir / "gold-scratch", f"{inst.instance_id}: patch")
    hidden = _overlay_of(base, inst.test_patch, workdir / "hidden-scratch", f"{inst.instance_id}: test_patch")
    for scratch in ("gold-scratch", "hidden-scratch"):
        shutil.rmtree(workdir / scratch, ignore_errors=True)
    return Materialized(base=base, hidden=hidden, gold=gold, pythonpath=inst.pythonpath or import_roots(base))


def write_overlay(tree: Path, files: dict[str, bytes | None]) -> None:
    """Put overlay files into a tree we own (a validation copy), replacing whatever was there."""
    for rel, data in files.items():
        target = tree / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if data is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def init_repo(tree: Path) -> str:
    """Make `tree` a git repository whose one commit, tagged `base`, is the tree as it is now.

    Author, committer and dates are fixed, so the same base always gets the same commit id.
    """
    exclude = "\n".join(IGNORED) + "\n"
    steps = [["init", "-q", "-b", "main"], ["config", "user.name", "bloodwork"],
             ["config", "user.email", "bloodwork@localhost"], ["add", "-A"],
             ["commit", "-q", "--no-verify", "-m", "base: the code as released"], ["tag", "base"]]
    for i, args in enumerate(steps):
        res = _git(args, tree)
        if res.returncode != 0:
            why = (res.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[0]
            raise SourceError(f"git {args[0]} in {tree} failed: {why}")
        if i == 0:
            (tree / ".git" / "info").mkdir(exist_ok=True)
            (tree / ".git" / "info" / "exclude").write_text(exclude)
    return _git(["rev-parse", "HEAD"], tree).stdout.decode().strip()
