"""Bring your own repo-fix instance: a real historical bug of a PyPI project, written as SWE-bench rows.

`data/click.jsonl` holds two real click bugs fixed in 8.1.8 (issues 2632 and 2500: the fix and the
regression test are upstream's, cut down to the lines that matter) against a checkout made from the
click 8.1.7 sdist with `init_repo` (fixed author and dates, so the base commit id is always the same).
click is a src-layout project that bloodwork's own environment also has installed, in another version:
the case where the hidden tests used to import the venv's click instead of the checkout.

The click sdist is downloaded once into the bloodwork cache and its environment built once (uv);
later runs reuse both.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bloodwork.manifold.runner import CommandRunner, bwrap_available
from bloodwork.tasks.repofix import (
    EnvError,
    InstanceError,
    RepoFixInstance,
    ensure_env,
    import_instances,
    load_instance_file,
    validate_instances,
)
from bloodwork.tasks.repofix.env import find_python
from bloodwork.tasks.repofix.instance import SdistRef
from bloodwork.tasks.repofix.sources import extract_archive, fetch_sdist, init_repo

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="the hidden tests run in the bwrap sandbox")
ROWS = Path(__file__).with_name("data") / "click.jsonl"
CLICK = SdistRef(name="click", version="8.1.7",
                 sha256="ca9853ad459e787e2192211578cc907e7594e294c7ccc834310722b41b9ca6de")
BLOODWORK = [sys.executable, "-m", "bloodwork.cli"]
FIX = ("(self.opts if self.default else self.secondary_opts)[0]",
       "(self.opts if default_value else self.secondary_opts)[0]")


def _rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("click") / "click"
    extract_archive(fetch_sdist(CLICK), repo)
    assert init_repo(repo) == _rows()[0]["base_commit"], "the same sdist always gives the same base commit"
    return repo


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, checkout: Path) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    items = import_instances(ROWS, checkout, out)
    assert [i.instance_id for i in items] == ["click-2632", "click-2500"]
    assert all("ignored field(s): created_at" in i.warnings[0] for i in items)
    assert [i.collected for i in items] == [5, 4]
    return out


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BLOODWORK, *args], capture_output=True, text=True, timeout=600, check=False, env=env,
                          cwd=cwd)


def test_src_layout_project_also_installed_in_bloodworks_venv_validates(imported: Path) -> None:
    assert importlib.metadata.version("click") != "8.1.7", "bloodwork's own click differs from the checkout's"
    inst = load_instance_file(imported / "click-2632")
    [result] = validate_instances([inst])
    assert result.ok, result.problems
    assert result.collected_all and result.base_fails_f2p and result.gold_passes_all
    assert result.base["tests/test_defaults.py::test_flag_default_map"] == "FAILED"
    assert set(result.gold.values()) == {"PASSED"}
    # The environment holds click's metadata but none of its code: only the checkout can be imported.
    python = Path(result.environment["path"]) / "venv" / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('click')); "
                            "import click"], capture_output=True, text=True, check=False)
    assert probe.stdout.strip() == "8.1.7" and "No module named 'click'" in probe.stderr


def test_a_bad_test_id_is_named_at_import(checkout: Path, tmp_path: Path) -> None:
    row = _rows()[0]
    row["PASS_TO_PASS"] = json.dumps([*json.loads(str(row["PASS_TO_PASS"])), "tests/test_defaults.py::test_nope",
                                      "tests/test_gone.py::test_x"])
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps(row) + "\n")
    with pytest.raises(InstanceError) as err:
        import_instances(jsonl, checkout, tmp_path / "out")
    message = str(err.value)
    assert f"{jsonl}:1: click-2632: 2 test id(s) not collected" in message and "\n" not in message
    assert "tests/test_defaults.py::test_nope" in message and "tests/test_gone.py::test_x" in message
    assert "test_basic_defaults" not in message
    assert [p.name for p in (tmp_path / "out").iterdir()] == [], "nothing is written for a refused file"


def test_moved_task_folder_validates_and_runs_by_id(imported: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(imported / "click-2632", moved / "click-2632")
    env = {**os.environ, "BLOODWORK_TASK_PATH": str(moved)}

    validated = _cli("tasks", "validate", "click-2632", "--json", env=env, cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    [result] = json.loads(validated.stdout)
    assert result["ok"] and "runs" not in result

    agent = tmp_path / "agent.yaml"
    look = 'python3 -c "import click, sys; print(click.__file__); print(sys.executable)"'
    agent.write_text(yaml.safe_dump([
        json.dumps({"thought": "which click", "q_next": "look", "op": {"name": "SYS_EXEC", "cmd": look}}),
        json.dumps({"thought": "fix", "q_next": "fix", "op": {"name": "SYS_EDIT", "path": "src/click/core.py",
                                                            "search": FIX[0], "replace": FIX[1]}}),
        json.dumps({"thought": "done", "q_next": "done", "op": {"name": "SYS_HALT", "reason": "fixed"}})]))
    ran = _cli("run", "repo-fix/click-2632", "--model", f"scripted:{agent}", "--ticks", "3", "--out",
               str(tmp_path / "runs"), "--run-id", "moved", env=env, cwd=tmp_path)
    run = tmp_path / "runs" / "moved"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "completed", ran.stdout + ran.stderr
    assert manifest["task_source"] == "repo-fix/click-2632", "found by id: a moved folder resumes from the path"
    assert manifest["verifier"]["passed"] and manifest["verifier"]["stage"] == "fixed"
    first = json.loads((run / "trace.jsonl").read_text().splitlines()[0])
    assert first["result"]["exit"] == 0
    blobs = (run / "context" / "blobs.jsonl").read_text()
    assert "/ws/src/click/__init__.py" in blobs, "the agent's python3 imports the workspace's click"
    assert f"{manifest['task_meta']['environment']['path']}/venv/bin/python" in blobs


def test_validate_shows_pytest_error_when_a_run_collects_nothing(imported: Path, tmp_path: Path) -> None:
    broken = tmp_path / "click-2632"
    shutil.copytree(imported / "click-2632", broken)
    data = yaml.safe_load((broken / "instance.yaml").read_text())
    data["PASS_TO_PASS"] = [*data["PASS_TO_PASS"], "tests/test_defaults.py::test_nope"]
    (broken / "instance.yaml").write_text(yaml.safe_dump(data))
    out = _cli("tasks", "validate", str(broken), "--json", "--verbose")
    assert out.returncode == 1, out.stderr
    [result] = json.loads(out.stdout)
    assert not result["ok"] and result["not_collected"] == ["tests/test_defaults.py::test_nope"]
    assert not result["base_fails_f2p"], "a run that ran nothing proves nothing about the bug"
    base = next(r for r in result["runs"] if r["tree"] == "base")
    assert base["exit_code"] == 4 and not base["ran"]
    assert any("ERROR: not found" in line and "test_nope" in line for line in base["errors"])
    assert any("never ran the tests" in p and "ERROR: not found" in p for p in result["problems"])


def test_a_run_that_cannot_prepare_is_one_line_and_leaves_nothing(imported: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "click-2632"
    shutil.copytree(imported / "click-2632", tampered)
    with open(tampered / "base.tar.gz", "ab") as fh:
        fh.write(b"x")
    halt = tmp_path / "halt.yaml"
    halt.write_text(yaml.safe_dump([json.dumps({"thought": "t", "q_next": "q", "op": {"name": "SYS_HALT",
                                                                                        "reason": "r"}})]))
    out = _cli("run", str(tampered), "--model", f"scripted:{halt}", "--out", str(tmp_path / "runs"),
               "--run-id", "never")
    assert out.returncode == 2
    assert "does not match the pinned" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "never").exists()


def test_environment_built_once_and_a_half_built_one_redone(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "tests").mkdir(parents=True)
    (base / "tests" / "test_t.py").write_text("def test_t():\n    pass\n")
    inst = RepoFixInstance.model_validate({
        "instance_id": "tiny-1", "repo": "me/tiny", "version": "1", "base_commit": "c", "repo_dir": str(tmp_path),
        "problem_statement": "p", "FAIL_TO_PASS": ["tests/test_t.py::test_t"], "patch": "x", "test_patch": "y",
        "pip_packages": ["iniconfig"]})
    first = ensure_env(inst, base, root=tmp_path / "envs")
    assert first.info["spec"]["install"] == "none" and first.info["spec"]["pip_packages"] == ["iniconfig", "pytest"]
    assert any(line.startswith("pytest==") for line in first.info["installed"])
    marker = first.venv / "marker"
    marker.write_text("")
    again = ensure_env(inst, base, root=tmp_path / "envs")
    assert again.root == first.root and again.info == first.info and marker.exists(), "a finished env is reused"
    (first.root / "env.json").unlink()  # as if the build had died before its end
    redone = ensure_env(inst, base, root=tmp_path / "envs")
    assert redone.root == first.root and not marker.exists()
    other = ensure_env(inst.model_copy(update={"pip_packages": ["iniconfig", "pytest<9"]}), base,
                       root=tmp_path / "envs")
    assert other.root != first.root, "other requirements, another environment"
    with pytest.raises(EnvError, match="python 3.99: no such interpreter"):
        find_python("3.99")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the sandbox then runs as uid 65534)")
def test_an_environment_built_under_a_strict_umask_is_usable_in_the_sandbox(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    inst = RepoFixInstance.model_validate({
        "instance_id": "tiny-1", "repo": "me/umask", "version": "1", "base_commit": "c", "repo_dir": str(tmp_path),
        "problem_statement": "p", "FAIL_TO_PASS": ["tests/test_t.py::test_t"], "patch": "x", "test_patch": "y"})
    old = os.umask(0o077)
    try:
        env = ensure_env(inst, base, root=tmp_path / "envs")
    finally:
        os.umask(old)
    private = [p for p in env.venv.rglob("*") if not p.is_symlink() and not p.stat().st_mode & 0o004]
    assert not private, private[:5]
    runner = CommandRunner(tmp_path / "ws", sandbox="bwrap", toolchain=env.toolchain())
    (tmp_path / "ws").mkdir()
    try:
        res = runner.run("id -u; python3 -c 'import pytest, sys; print(sys.prefix)'", 30)
    finally:
        runner.close()
    assert res.exit_code == 0 and res.text.split() == ["65534", str(env.venv)], res.text


@pytest.fixture(autouse=True)
def _no_task_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("BLOODWORK_TASK_PATH", raising=False)
    yield
