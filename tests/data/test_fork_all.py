"""`fork --all-traps` and teachers: trap states of a whole folder of runs, teacher answers kept only when they
verifiably recover, their rows tagged `teacher:<spec>`, and a killed pass resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bloodwork.data.build import BuildOptions, build_dataset
from bloodwork.data.fork import FORK_FILE, ForkRecord
from bloodwork.data.fork_all import INDEX_FILE, fork_all, teacher_for, trap_states
from bloodwork.data.mix import parse_mix
from bloodwork.data.teacher import partial_score
from tests.conftest import Runner, frame

# The student (scripted, not a model): writes hello.txt right (the verifier passes from tick 1 on), then
# reads a missing file (PAGE_FAULT at tick 2), then reads a.txt. Trap state: tick 3.
STUDENT = [frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello"}),
           frame({"name": "SYS_READ", "path": "a.txt"}),
           frame({"name": "SYS_READ", "path": "missing.txt"}),
           frame({"name": "SYS_READ", "path": "b.txt"}),
           frame({"name": "SYS_READ", "path": "sub/c.txt"})]
TRAP_STATE = 3

# Teachers (scripted policies standing in for a reference policy or an API model; not models).
TEACHERS = {
    # recovers: a new file, no trap, the verifier still passes
    "good": frame({"name": "SYS_WRITE", "path": "notes.txt", "content": "recovered"}),
    # traps in the workspace copy: the file does not exist there
    "trapping": frame({"name": "SYS_READ", "path": "nowhere.txt"}),
    # progresses by the kernel's measure (a changed file) but breaks what the verifier passed
    "breaking": frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "bye"}),
}


def fork_dir(record: ForkRecord) -> Path:
    return Path(record.base_dir).parent.parent  # FORK_DIR/base/<rebuilt run>


def teacher_script(root: Path, name: str) -> str:
    path = root / f"teacher_{name}.py"
    path.write_text(f"def policy(call, messages):\n    return {TEACHERS[name]!r}\n")
    return f"scripted:{path}"


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ForkRecord]]:
    """One student run per teacher, each forked at its trap state with samples 0 (the teacher only)."""
    root = tmp_path_factory.mktemp("taught")
    runner = Runner(root)
    out = {}
    for name in TEACHERS:
        _, paths = runner.run(STUDENT, run_id=f"student-{name}")
        forks = root / f"forks-{name}"
        index = fork_all([paths.root], forks, samples=0, horizon=1, teachers=[teacher_script(root, name)],
                         include_scripted=True)
        assert [(s.tick, s.status) for s in index.states] == [(TRAP_STATE, "done")], index.states
        record = ForkRecord.model_validate_json((forks / f"student-{name}" / f"t{TRAP_STATE}" / FORK_FILE).read_text())
        out[name] = (paths.root, record)
    return out


def test_trap_states_are_the_ticks_after_traps(taught):
    src, _ = taught["good"]
    assert trap_states(src) == [(TRAP_STATE, "in a trap streak since tick 2 (PAGE_FAULT)")]  # tick 3 recovered
    assert [t for t, _ in trap_states(src, every=2)] == [0, 2, 3, 4]


def test_a_teacher_that_recovers_is_kept_with_its_provenance(taught):
    _, record = taught["good"]
    (teacher,) = record.candidates
    assert teacher.source == "teacher" and teacher.provenance == f"teacher:{record.teacher}"
    assert teacher.label == "recovered" and teacher.kept is True and teacher.polarity == "positive"
    assert teacher.score_before == teacher.score_after == 1.0


def test_a_teacher_action_that_traps_in_the_copy_is_never_a_recovery_row(taught, tmp_path: Path):
    _, record = taught["trapping"]
    (teacher,) = record.candidates
    assert teacher.kept is False and teacher.polarity == "neutral"
    assert any("PAGE_FAULT" in line for line in teacher.evidence)
    src, _ = taught["trapping"]
    stats = build_dataset([src, fork_dir(record)], tmp_path / "d",
                          BuildOptions(mix=parse_mix("1/1/0"), include_scripted=True, test_fraction=0,
                                       exact_lengths=False), generator="test")
    kto = [json.loads(line) for line in (tmp_path / "d" / "train" / "kto.jsonl").read_text().splitlines()]
    assert not [r for r in kto if r["meta"]["provenance"].startswith("teacher:")]
    assert stats.skipped.get("teacher answer not kept") == 1
    assert all(not p.startswith("teacher:") for pools in stats.by_pool_provenance.values() for pool in pools.values()
               for p in pool)


def test_a_teacher_that_lowers_the_verifier_score_is_not_kept(taught):
    _, record = taught["breaking"]
    (teacher,) = record.candidates
    assert teacher.label in ("recovered", "progressed")  # the kernel saw progress ...
    assert teacher.score_before == 1.0 and teacher.score_after == 0.0  # ... the verifier saw a regression
    assert teacher.kept is False and "score fell" in " ".join(teacher.evidence)


def test_kept_teacher_rows_are_tagged_and_split_by_provenance(taught, tmp_path: Path):
    src, record = taught["good"]
    stats = build_dataset([src, fork_dir(record)], tmp_path / "d",
                          BuildOptions(mix=parse_mix("1/0/0"), include_scripted=True, test_fraction=0,
                                       exact_lengths=False), generator="test")
    teacher_prov = f"teacher:{record.teacher}"
    # the student's own recovery at the trap state, and the teacher's answer at the same state
    assert stats.mix["train"].available_by_provenance["recovery"] == {"scripted": 1, teacher_prov: 1}
    assert stats.distinct_states["teacher"].before == 1
    sft = [json.loads(line) for line in (tmp_path / "d" / "train" / "sft.jsonl").read_text().splitlines()]
    assert all(r["meta"]["provenance"] == "scripted" for r in sft)  # the mix took golden only: no teacher row
    only_real = build_dataset([src, fork_dir(record)], tmp_path / "r",
                              BuildOptions(mix=parse_mix("1/1/1"), include_scripted=True, test_fraction=0,
                                           exact_lengths=False, provenance=["scripted"]), generator="test")
    assert only_real.filtered_out == {teacher_prov: 1}
    assert teacher_prov not in only_real.mix["train"].available_by_provenance["recovery"]


def test_all_traps_resumes_after_a_killed_state(taught, tmp_path: Path):
    src, record = taught["good"]
    forks = fork_dir(record).parent.parent
    copy = tmp_path / "forks"
    shutil.copytree(forks, copy, symlinks=True)
    state = copy / src.name / f"t{TRAP_STATE}"
    (state / FORK_FILE).unlink()  # as if killed before fork.json was written
    teacher = record.teacher
    assert teacher is not None
    index = fork_all([src], copy, samples=0, horizon=1, teachers=[teacher], include_scripted=True)
    assert index.states[0].status == "done" and (state / FORK_FILE).is_file()
    again = fork_all([src], copy, samples=0, horizon=1, teachers=[teacher], include_scripted=True)
    assert again.states[0].status == "kept" and again.totals["teacher_kept"] == 1
    assert json.loads((copy / INDEX_FILE).read_text())["totals"]["forked"] == 1
    # a pass over another run into the same folder adds to the index, it does not replace it
    other, other_record = taught["trapping"]
    assert other_record.teacher is not None
    fork_all([other], copy, samples=0, horizon=1, teachers=[other_record.teacher], include_scripted=True)
    index = json.loads((copy / INDEX_FILE).read_text())
    assert {(s["run_id"], s["status"]) for s in index["states"]} == {(src.name, "kept"), (other.name, "done")}
    assert index["totals"]["forked"] == 2 and index["totals"]["teacher_kept"] == 1


def test_teacher_choice_and_partial_scores():
    assert teacher_for("repo-fix/x", ["expert"]) == "expert:repo-fix/x"
    assert teacher_for("repo-fix/x", ["expert:long-haul/ledger"]) is None
    assert teacher_for("repo-fix/x", ["expert:long-haul/ledger", "openai:m"]) == "openai:m"
    assert partial_score({"passed": False, "stage": "fixed"}) == 0.5
    assert partial_score({"passed": True, "stage": "recovered"}) == 1.0
    assert partial_score({"passed": False, "stage": "failing", "details": {"passed": 3, "failed": 1, "errors": 0}}) \
        == 0.75
    assert partial_score(None) is None
