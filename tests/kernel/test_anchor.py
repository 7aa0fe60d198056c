"""The journal is anchored: a run's committed head (registers.json, run.json, a bundle's manifest.json) pins where
its chain must end, so cutting, extending, rewriting or fabricating the journal fails `verify` and `replay`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bloodwork.chronos.files import sha256_file
from bloodwork.chronos.journal import read_events, verify
from bloodwork.chronos.run import RunPaths, committed_head, verify_run
from bloodwork.evidence.extract import extract, verify_bundle
from bloodwork.evidence.replay import ReplayRefused, replay_run
from tests.conftest import Runner, forge_chain, frame

READ_A = frame({"name": "SYS_READ", "path": "a.txt"})
MISSING = frame({"name": "SYS_READ", "path": "missing.txt"})
NONE = {"sandbox": "none"}  # nothing here runs a command: these tests need no bubblewrap


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bloodwork.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A run that died (so extract bundles it): panics at ticks 3 and 6 with a panic budget of 2."""
    runner = Runner(tmp_path_factory.mktemp("anchor"))
    _, paths = runner.run([READ_A, *[MISSING] * 6], run_id="dies", panic_budget=2, **NONE)
    return paths


def copy_run(paths: RunPaths, to: Path) -> RunPaths:
    shutil.copytree(paths.root, to)
    return RunPaths(to)


def rechain(path: Path, events: list[dict]) -> None:
    """An attacker with write access to the journal only: every hash recomputed, so the chain is valid."""
    path.unlink()
    forge_chain(path, events)


def cut_last(path: Path) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in path.read_bytes().splitlines()[:-1]))


def truncate_half(path: Path) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(x + b"\n" for x in lines[: len(lines) // 2]))


def append_forged(path: Path) -> None:
    report = verify(path)
    forge_chain(path, [{"tick": 99, "kind": "halt", "data": {"reason": "forged: the run completed",
                                                                 "verifier": {"passed": True}}}],
                seq=report.events, prev=report.last_hash)


def rewrite_middle(path: Path) -> None:
    events = [e.model_dump() for e in read_events(path)]
    panic = next(e for e in events if e["kind"] == "panic")
    panic["data"]["cause"] = "ORACLE_FAULT"
    rechain(path, events)


def fabricate(path: Path) -> None:
    n = len(read_events(path))
    rechain(path, [{"tick": 0, "kind": "run_start", "data": {"run_id": "dies"}}] +
            [{"tick": t, "kind": "tick", "data": {"op": "SYS_READ", "traps": []}} for t in range(n - 1)])


TAMPERINGS = [cut_last, truncate_half, append_forged, rewrite_middle, fabricate]


def test_a_finished_run_names_its_head_in_registers_and_run_json(finished):
    head = committed_head(finished)
    manifest = json.loads(finished.manifest.read_text())
    assert head is not None and manifest["status"] == "died"
    assert manifest["journal_head"] == head.model_dump()
    assert read_events(finished.journal)[-1].hash == head.hash and head.seq == len(read_events(finished.journal)) - 1
    res = cli("verify", str(finished.root))
    assert res.returncode == 0 and f"{head.seq}:{head.hash}" in res.stdout
    assert cli("verify", str(finished.root), "--head", f"{head.seq}:{head.hash}").returncode == 0


@pytest.mark.parametrize("tamper", TAMPERINGS)
def test_each_tampering_fails_verify(finished, tmp_path, tamper):
    paths = copy_run(finished, tmp_path / "run")
    tamper(paths.journal)
    assert verify(paths.journal).ok  # the chain alone is still self-consistent
    report = verify_run(paths)
    assert not report.ok and "committed head" in report.reason
    lines = len(paths.journal.read_bytes().splitlines())
    assert report.trusted < lines or tamper is cut_last or tamper is truncate_half


def test_verify_exits_1_on_a_tampered_run(finished, tmp_path):
    paths = copy_run(finished, tmp_path / "run")
    append_forged(paths.journal)
    res = cli("verify", str(paths.root))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "journal broken" in res.stderr and "after the committed head" in res.stderr


def test_registers_and_journal_rewritten_together_still_fail_against_a_head_kept_elsewhere(finished, tmp_path):
    paths = copy_run(finished, tmp_path / "run")
    kept = committed_head(finished)
    assert kept is not None
    cut_last(paths.journal)
    report = verify(paths.journal)  # the attacker also rewrites registers.json and run.json to the new end
    for file in (paths.registers, paths.manifest):
        data = json.loads(file.read_text())
        if "journal_seq" in data:
            data["journal_seq"], data["journal_prev"] = report.events, report.last_hash
        else:
            data["journal_head"] = {"seq": report.events - 1, "hash": report.last_hash}
        file.write_text(json.dumps(data))
    assert verify_run(paths).ok  # what verify alone cannot catch: write access to everything
    res = cli("verify", str(paths.root), "--head", f"{kept.seq}:{kept.hash}")
    assert res.returncode == 1 and "--head" in res.stderr


def test_run_json_and_registers_must_agree_once_the_run_has_ended(finished, tmp_path):
    paths = copy_run(finished, tmp_path / "run")
    manifest = json.loads(paths.manifest.read_text())
    manifest["journal_head"]["seq"] -= 1
    paths.manifest.write_text(json.dumps(manifest))
    report = verify_run(paths)
    assert not report.ok and "run.json" in report.reason


@pytest.mark.parametrize("tamper", [cut_last, rewrite_middle])
def test_replay_refuses_a_cut_or_rewritten_journal(finished, tmp_path, tamper):
    paths = copy_run(finished, tmp_path / "run")
    tamper(paths.journal)
    with pytest.raises(ReplayRefused, match="does not verify"):
        replay_run(paths.root, tmp_path / "replays")
    assert not (tmp_path / "replays").exists()
    if tamper is cut_last:
        res = cli("replay", str(paths.root), "--out", str(tmp_path / "replays"))
        assert res.returncode == 1 and "refused" in res.stderr and "reproduced" not in res.stdout


def test_replays_within_one_second_get_their_own_directories(finished, tmp_path):
    first = replay_run(finished.root, tmp_path / "replays")
    second = replay_run(finished.root, tmp_path / "replays")
    assert first.same and second.same and first.replay_dir != second.replay_dir


def test_a_death_bundle_carries_the_head_and_verify_checks_it(finished, tmp_path):
    extract([finished.root], tmp_path / "evidence", generator="test")
    bundle = tmp_path / "evidence" / "deaths" / "dies"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["journal_head"] == committed_head(finished).model_dump()
    assert verify_bundle(bundle).ok and cli("verify", str(bundle)).returncode == 0

    cut_last(bundle / ".journal.log")  # a file changed: its sha256 no longer matches
    assert "sha256" in verify_bundle(bundle).reason
    manifest["files"][".journal.log"] = sha256_file(bundle / ".journal.log")  # ... and the sha256 updated too
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = verify_bundle(bundle)
    assert not report.ok and "committed head" in report.reason and report.anchor == "manifest.json"
    res = cli("verify", str(bundle))
    assert res.returncode == 1 and "committed head" in res.stderr
