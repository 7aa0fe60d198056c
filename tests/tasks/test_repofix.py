"""`repo-fix/<instance>`: instance files, the built-in instances, and the staged verifier.

The built-ins download their PyPI sdists once into the bloodwork cache (`$BLOODWORK_CACHE`, else
~/.cache/bloodwork/sdists); later runs are offline. Verification runs pytest with the sandbox's
python3, so these tests need bubblewrap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bloodwork.manifold.runner import bwrap_available
from bloodwork.tasks.base import TaskError
from bloodwork.tasks.registry import load_task
from bloodwork.tasks.repofix import (
    InstanceError,
    RepoFixInstance,
    RepoFixTask,
    SourceError,
    builtin_instance,
    builtin_instances,
    import_instances,
    load_instance_file,
    validate_instances,
    write_instance,
)
from bloodwork.tasks.repofix.importer import read_rows
from bloodwork.tasks.repofix.instance import BUILTIN_DIR
from bloodwork.tasks.repofix.judge import check_pr, is_testish, pytest_selectors, repro_kind
from bloodwork.tasks.repofix.sources import fetch_sdist

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="verification runs the sandbox's python3")
FULL_PR = "# Fix it\n\n## Cause\nwhy\n\n## Fix\nwhat\n\n## Testing\nhow\n"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


# -- instance files ---------------------------------------------------------------------------------

def test_builtins_cover_real_and_injected_bugs_from_several_projects() -> None:
    insts = builtin_instances()
    assert len(insts) >= 4
    assert len({i.source_archive.name for i in insts if i.source_archive}) >= 3
    real = [i for i in insts if i.bug == "real"]
    assert real and all(i.fix_release is not None for i in real)
    for inst in insts:
        assert inst.source_archive is not None, "built-ins come from pinned PyPI sdists"
        statement = inst.problem_statement.lower()
        assert "```" in statement, f"{inst.instance_id}: a bug report shows a reproduction"
        assert "patch" not in statement and "fix:" not in statement


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = {"instance_id": "x-1", "repo": "o/x", "version": "1.0", "problem_statement": "it breaks",
        "source_archive": {"name": "x", "version": "1.0", "sha256": "0" * 64},
        "FAIL_TO_PASS": ["tests/test_x.py::test_a"], "patch": "--- a/x\n+++ b/x\n", "test_patch": "--- a/t\n+++ b/t\n"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"FAIL_TO_PASS": []}, "FAIL_TO_PASS"),
    ({"base_commit": "abc", "repo_dir": "/tmp"}, "exactly one of"),
    ({"base_archive": {"path": "../b.tar", "sha256": "0" * 64}, "source_archive": None}, "inside the base tree"),
    ({"PASS_TO_PASS": ["test_foo (app.tests.FooTest)"]}, "not a pytest node id"),
    ({"FAIL_TO_PASS": ["test_symbol_name"]}, "Django- or SymPy-style"),
    ({"python": "2.7"}, "python"),
    ({"patch": ""}, "patch and test_patch are required"),
    ({"source_archive": {"name": "x", "version": "1", "sha256": "nothex"}}, "source_archive.sha256"),
    ({"instance_id": "../evil"}, "instance_id"),
    ({"surprise": 1}, "surprise"),
    ({"FAIL_TO_PASS": "[not json"}, "not a JSON list"),
    ({"bug": "injected", "source_archive": None, "base_commit": "abc", "repo_dir": "/tmp"}, "injected"),
])
def test_bad_instance_file_is_one_typed_line(tmp_path: Path, change: dict[str, object], expected: str) -> None:
    data = {**GOOD, **change}
    path = _write(tmp_path / "inst.yaml", json.dumps({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(InstanceError) as err:
        load_instance_file(path)
    assert isinstance(err.value, TaskError)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and expected in message


def test_unreadable_or_broken_yaml_is_one_typed_line(tmp_path: Path) -> None:
    with pytest.raises(InstanceError, match="cannot be read"):
        load_instance_file(tmp_path / "missing.yaml")
    with pytest.raises(InstanceError, match="not valid YAML") as err:
        load_instance_file(_write(tmp_path / "bad.yaml", "a: [1,\n"))
    assert "\n" not in str(err.value)
    with pytest.raises(InstanceError, match="must be a mapping"):
        load_instance_file(_write(tmp_path / "list.yaml", "- 1\n"))


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


CALC_BUGGY = "def add(a, b):\n    return a - b\n"
CALC_TEST = "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
GOLD = "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
TEST_PATCH = ("--- a/tests/test_calc.py\n+++ b/tests/test_calc.py\n@@ -3,3 +3,7 @@\n\n def test_zero():\n"
              "     assert add(0, 0) == 0\n+\n+\n+def test_add():\n+    assert add(2, 3) == 5\n")


@pytest.fixture
def calc_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(CALC_BUGGY)
    (repo / "tests" / "test_calc.py").write_text(CALC_TEST)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    return repo, _git(repo, "rev-parse", "HEAD").strip()


def _swe_row(commit: str, **extra: object) -> str:
    row = {"instance_id": "calc-1", "repo": "me/calc", "version": "0.1", "base_commit": commit,
           "problem_statement": "add(2, 3) returns -1", "patch": GOLD, "test_patch": TEST_PATCH,
           "FAIL_TO_PASS": json.dumps(["tests/test_calc.py::test_add"]),
           "PASS_TO_PASS": json.dumps(["tests/test_calc.py::test_zero"]),
           "hints_text": "", "created_at": "2024-01-01", "environment_setup_commit": commit, **extra}
    return json.dumps(row)


@needs_bwrap
def test_import_swe_bench_jsonl_then_validate_and_run_as_a_task(tmp_path: Path, calc_repo: tuple[Path, str]) -> None:
    repo, commit = calc_repo
    jsonl = _write(tmp_path / "calc.jsonl", _swe_row(commit, timeout_s=60, env={"CALC_MODE": "strict"}) + "\n\n")
    [item] = import_instances(jsonl, repo, tmp_path / "tasks")
    assert item.collected == 2
    assert item.warnings == [f"{jsonl}:1: ignored field(s): created_at (not used), environment_setup_commit (the "
                             "environment is built from base_commit), hints_text (hints are not shown to the agent)"]
    folder = tmp_path / "tasks" / "calc-1"
    assert sorted(p.name for p in folder.iterdir()) == ["base.tar.gz", "instance.yaml"]
    inst = load_instance_file(folder)
    assert inst.FAIL_TO_PASS == ["tests/test_calc.py::test_add"] and inst.repo_dir is None
    assert inst.base_commit == commit and inst.timeout_s == 60 and inst.env == {"CALC_MODE": "strict"}
    assert str(repo) not in (folder / "instance.yaml").read_text(), "a task folder does not name the checkout"
    [check] = validate_instances([inst])
    assert check.ok, check.problems
    assert check.collected_all and check.base == {"tests/test_calc.py::test_add": "FAILED",
                                                  "tests/test_calc.py::test_zero": "PASSED"}
    task = load_task(str(folder))
    assert isinstance(task, RepoFixTask) and task.source == str(folder.resolve())
    ws = tmp_path / "ws"
    ws.mkdir()
    task.prepare(ws, seed=0)
    try:
        assert task.verify(ws).stage == "none"
        (ws / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        result = task.verify(ws)
        assert result.passed and result.stage == "fixed"
    finally:
        task.close()


@pytest.mark.parametrize(("line", "expected"), [
    ("{not json", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    (json.dumps({"instance_id": "a"}), "missing required field(s): repo, base_commit, problem_statement"),
    (json.dumps({"instance_id": "a", "repo": "r", "base_commit": "c", "problem_statement": "p", "FAIL_TO_PASS": "[]",
                 "patch": "x", "test_patch": "y"}), "FAIL_TO_PASS"),
])
def test_bad_jsonl_lines_are_one_typed_line(tmp_path: Path, calc_repo: tuple[Path, str], line: str,
                                            expected: str) -> None:
    repo, commit = calc_repo
    jsonl = _write(tmp_path / "in.jsonl", _swe_row(commit) + "\n" + line + "\n")
    with pytest.raises(InstanceError) as err:
        import_instances(jsonl, repo, tmp_path / "out")
    assert f"{jsonl}:2:" in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "calc-1").exists(), "a refused file writes nothing"


def test_jsonl_checked_against_the_checkout(tmp_path: Path, calc_repo: tuple[Path, str]) -> None:
    repo, commit = calc_repo
    (tmp_path / "plain").mkdir()
    with pytest.raises(InstanceError, match="not a git checkout"):
        read_rows(_write(tmp_path / "a.jsonl", _swe_row(commit)), tmp_path / "plain")
    with pytest.raises(InstanceError, match="is not in"):
        read_rows(_write(tmp_path / "b.jsonl", _swe_row("f" * 40)), repo)
    with pytest.raises(InstanceError, match="appears twice"):
        read_rows(_write(tmp_path / "c.jsonl", _swe_row(commit) + "\n" + _swe_row(commit)), repo)
    with pytest.raises(InstanceError, match="no instances"):
        read_rows(_write(tmp_path / "d.jsonl", "\n"), repo)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to hand the checkout to another user")
def test_a_checkout_git_refuses_for_ownership_is_reported_as_such(tmp_path: Path,
                                                                  calc_repo: tuple[Path, str]) -> None:
    repo, commit = calc_repo
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    with pytest.raises(InstanceError) as err:
        read_rows(_write(tmp_path / "a.jsonl", _swe_row(commit)), repo)
    assert "dubious ownership" in str(err.value) and "safe.directory" in str(err.value)
    assert "is not in" not in str(err.value)


# -- sources ----------------------------------------------------------------------------------------

def test_sdist_cache_is_offline_and_checks_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = builtin_instance("inflection-humanize").source_archive
    assert ref is not None
    cached = fetch_sdist(ref)  # downloads on the first run ever, then comes from the cache
    cache = tmp_path / "cache"
    (cache / ref.name / ref.version).mkdir(parents=True)
    shutil.copy(cached, cache / ref.name / ref.version / cached.name)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache must answer without pip")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch_sdist(ref, cache).read_bytes() == cached.read_bytes()

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / cached.name).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(SourceError, match="does not match the pinned") as err:
        fetch_sdist(ref, tmp_path / "other-cache")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "other-cache").rglob("*.tar.gz")), "a tampered archive is never cached"


# -- pieces of the verifier -------------------------------------------------------------------------

def test_pytest_selectors() -> None:
    assert pytest_selectors(["a.py::t[1]", "a.py::t[2]", "a.py::C::m", "b.py"]) == ["a.py::t", "a.py::C::m", "b.py"]


def test_testish_paths_and_reproduction_kinds() -> None:
    assert is_testish("tests/files/x.sql") and is_testish("test_x.py") and is_testish("repro.py")
    assert not is_testish("pkg/core.py") and not is_testish("PR.md")
    assert repro_kind("tests/test_x.py") == "pytest" and repro_kind("repro.py") == "script"
    assert repro_kind("tests/conftest.py") is None and repro_kind("tests/files/x.sql") is None


def test_pr_draft_needs_title_cause_fix_and_testing() -> None:
    assert check_pr(FULL_PR)["ok"]
    assert check_pr(None)["problems"] == ["PR.md is missing"]
    partial = check_pr("# Title\n\n## Fix\nchanged a line\n\n## Testing\n")
    assert not partial["ok"] and not partial["has_cause"] and not partial["has_testing"] and partial["has_fix"]
    assert not check_pr("no title\n## Cause\na\n## Fix\nb\n## Testing\nc\n")["ok"]


# -- the built-in instances, for real ---------------------------------------------------------------

@needs_bwrap
def test_every_builtin_instance_validates() -> None:
    """The base code fails FAIL_TO_PASS (and passes PASS_TO_PASS); the gold patch passes everything."""
    results = validate_instances()
    assert [r.instance_id for r in results] == [i.instance_id for i in builtin_instances()]
    for r in results:
        assert r.ok, (r.instance_id, r.problems)
        assert r.base_fails_f2p and r.gold_passes_all and r.base_p2p_pass


REPRO = ("import cachetools.keys\n\n\ndef test_keyword_order():\n"
         "    assert cachetools.keys.hashkey(a=1, b=2) == cachetools.keys.hashkey(b=2, a=1)\n")
BAD_KEYS = "sum(kwargs.items(), _kwmark)"
GOOD_KEYS = "sum(sorted(kwargs.items()), _kwmark)"


@pytest.fixture
def hashkey_task(tmp_path: Path) -> tuple[RepoFixTask, Path]:
    task = load_task("repo-fix/cachetools-hashkey")
    assert isinstance(task, RepoFixTask)
    ws = tmp_path / "ws"
    ws.mkdir()
    task.prepare(ws, seed=0)
    yield task, ws
    task.close()


@needs_bwrap
def test_workspace_is_the_base_commit_and_hides_the_hidden_tests(hashkey_task: tuple[RepoFixTask, Path]) -> None:
    task, ws = hashkey_task
    assert BAD_KEYS in (ws / "src/cachetools/keys.py").read_text()
    assert not (ws / "tests/test_bloodwork_keys.py").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    tag = subprocess.run(["git", "tag"], cwd=ws, capture_output=True, text=True, check=True).stdout.split()
    assert tag == ["base"]
    assert "@cached" in task.goal and "PR.md" in task.goal
    toolchain = task.toolchain()
    assert toolchain.pythonpath == ("src",), "a src layout is imported from the checkout's src/"
    assert Path(toolchain.bin_dir, "python3").exists() and Path(toolchain.bin_dir, "pytest").exists()


@needs_bwrap
def test_stages_climb_with_the_work_and_a_half_result_is_a_lower_stage(
        hashkey_task: tuple[RepoFixTask, Path]) -> None:
    task, ws = hashkey_task
    before = _tree_digest(ws)
    nothing = task.verify(ws)
    assert (nothing.passed, nothing.stage) == (False, "none")
    assert _tree_digest(ws) == before, "verification must not touch the workspace"

    (ws / "tests/test_repro_keys.py").write_text(REPRO)
    repro_only = task.verify(ws)
    assert (repro_only.passed, repro_only.stage) == (False, "reproduced")
    [cand] = repro_only.details["reproduction"]["candidates"]
    assert cand["fails_on_base"] and not cand["passes_on_fix"]

    keys = ws / "src/cachetools/keys.py"
    keys.write_text(keys.read_text().replace(BAD_KEYS, GOOD_KEYS))
    no_pr = task.verify(ws)
    assert (no_pr.passed, no_pr.stage) == (True, "tested"), no_pr.summary
    assert no_pr.details["pr"]["problems"] == ["PR.md is missing"]
    assert [f["path"] for f in no_pr.details["diff"]["files"]] == ["src/cachetools/keys.py", "tests/test_repro_keys.py"]
    assert "+        return _HashedTuple(args + sum(sorted(" in no_pr.details["diff"]["patch"]

    (ws / "PR.md").write_text("# Sort keyword arguments\n\n## Fix\nsorted them\n")
    assert task.verify(ws).stage == "tested"
    (ws / "PR.md").write_text(FULL_PR)
    done = task.verify(ws)
    assert (done.passed, done.stage) == (True, "pr_drafted")
    assert done.details["stages"] == {"reproduced": True, "fixed": True, "tested": True, "pr_drafted": True}


@needs_bwrap
def test_fix_without_a_real_reproduction_stops_at_fixed(hashkey_task: tuple[RepoFixTask, Path]) -> None:
    task, ws = hashkey_task
    keys = ws / "src/cachetools/keys.py"
    keys.write_text(keys.read_text().replace(BAD_KEYS, GOOD_KEYS))
    (ws / "repro.py").write_text("raise SystemExit(1)\n")  # fails everywhere: reproduces nothing
    (ws / "PR.md").write_text(FULL_PR)
    result = task.verify(ws)
    assert (result.passed, result.stage) == (True, "fixed")
    assert result.details["reproduction"]["reproduced"] and not result.details["reproduction"]["confirmed_by_fix"]


@needs_bwrap
def test_breaking_pass_to_pass_is_not_resolved(hashkey_task: tuple[RepoFixTask, Path]) -> None:
    task, ws = hashkey_task
    keys = ws / "src/cachetools/keys.py"
    text = keys.read_text().replace(BAD_KEYS, GOOD_KEYS)
    keys.write_text(text.replace("    key += tuple(type(v) for v in args)\n", ""))  # typed keys lose arg types
    result = task.verify(ws)
    assert not result.passed and result.details["hidden_tests"]["f2p_ok"]
    assert not result.details["hidden_tests"]["p2p_ok"]


def test_unknown_instance_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="unknown repo-fix instance 'nope'.*sqlparse-784"):
        load_task("repo-fix/nope")
    assert load_task("long-haul/ledger").id == "long-haul/ledger"


def test_instance_model_round_trips(tmp_path: Path) -> None:
    inst = builtin_instance("sqlparse-784")
    write_instance(inst, tmp_path / "i.yaml")
    loaded = load_instance_file(tmp_path / "i.yaml")
    assert loaded.model_dump() == inst.model_dump() and loaded.folder == tmp_path.resolve()
    assert RepoFixInstance.model_validate(inst.model_dump()).model_dump() == inst.model_dump()


def test_pythonpath_written_as_env_means_pythonpath(tmp_path: Path) -> None:
    """A hand-written `env: {PYTHONPATH: src}` (the only way before `pythonpath`) is read as `pythonpath`."""
    inst = load_instance_file(_write(tmp_path / "i.yaml", json.dumps({**GOOD, "env": {"PYTHONPATH": "src:lib",
                                                                                     "X": "1"}})))
    assert inst.pythonpath == ["src", "lib"] and inst.env == {"X": "1"}


EXPERT = BUILTIN_DIR / "experts" / "inflection-humanize.py"


@needs_bwrap
def test_scripted_expert_reaches_pr_drafted_through_the_cli(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("inflection_expert_under_test", EXPERT)
    assert spec is not None and spec.loader is not None
    expert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(expert)
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("bloodwork")), "run", "repo-fix/inflection-humanize",
         "--model", f"scripted:{EXPERT}", "--out", str(out), "--ticks", str(len(expert.PLAN) + 2),
         "--run-id", "expert"], capture_output=True, text=True, timeout=300, check=False)
    run = out / "expert"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "completed", proc.stdout + proc.stderr
    assert manifest["provenance"] == "scripted" and manifest["ticks"] == len(expert.PLAN)
    verdict = manifest["verifier"]
    assert verdict["passed"] and verdict["stage"] == "pr_drafted", verdict["summary"]
    trace = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    for tick, code in expert.EXPECT_EXIT.items():
        assert trace[tick]["result"]["exit"] == code, (tick, trace[tick]["result"])
    assert [(r["tick"], r["traps"]) for r in trace if r["traps"]] == []  # healthy work traps nothing
    workspace_diff = subprocess.run(["git", "diff", "base", "--stat"], cwd=run / "workspace", capture_output=True,
                                    text=True, check=True).stdout
    assert "inflection/__init__.py" in workspace_diff
