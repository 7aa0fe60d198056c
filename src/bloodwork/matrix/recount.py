"""`bloodwork matrix recount`: rebuild every figure of a matrix from its raw files and compare.

A sceptic should not have to trust `model_matrix.json`. The recount re-reads the frozen eval set (its
sha256 must still match), scores each stored raw answer again with `isa.parse` (the stored verdicts are
ignored), recomputes the rates and latencies, and counts the closed-loop figures again from the runs'
manifests and journals. Any figure that differs is listed; `write` replaces the matrix files by the
recount (for a matrix made before a figure existed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bloodwork.chronos.files import atomic_write
from bloodwork.matrix.evalset import load_evalset
from bloodwork.matrix.loop import loop_result
from bloodwork.matrix.report import (
    CHART_FILE,
    MARKDOWN_FILE,
    MATRIX_FILE,
    MatrixError,
    MatrixReport,
    ModelRow,
    load_matrix,
    render_chart,
    render_markdown,
)
from bloodwork.matrix.score import Answer, rejudge, score


class Difference(BaseModel):
    """One figure whose stored value is not what the raw files give."""

    row: str
    figure: str
    stored: Any
    recounted: Any


class Recount(BaseModel):
    report: MatrixReport
    rows_recounted: int
    answers_rescored: int
    loop_runs_recounted: int
    differences: list[Difference]
    added: list[str]


def _existing(stored: str, fallback: Path) -> Path:
    """A path as the matrix recorded it (relative to where it ran), else the same file inside the matrix."""
    path = Path(stored)
    return path if path.exists() else fallback


def _compare(row: str, prefix: str, stored: Any, recounted: Any, out: list[Difference], added: list[str]) -> None:
    if isinstance(stored, dict) and isinstance(recounted, dict):
        for key in sorted(set(stored) | set(recounted)):
            _compare(row, f"{prefix}.{key}", stored.get(key), recounted.get(key), out, added)
    elif stored is None and recounted is not None:
        added.append(f"{row}: {prefix}")
    elif stored != recounted:
        out.append(Difference(row=row, figure=prefix, stored=stored, recounted=recounted))


def _recount_answers(row: ModelRow, matrix_dir: Path, states: dict[str, Any], out: list[Difference],
                     added: list[str]) -> tuple[dict[str, Any], int]:
    if row.answers_file is None:
        return {}, 0
    file = _existing(row.answers_file, matrix_dir / "answers" / Path(row.answers_file).name)
    if not file.is_file():
        raise MatrixError(f"{row.label}: its answers file {row.answers_file} is gone; the row cannot be recounted")
    stored = [Answer.model_validate_json(line) for line in file.read_text(encoding="utf-8").splitlines()]
    missing = sorted({a.state_id for a in stored} - set(states))
    if missing:
        raise MatrixError(f"{row.label}: {len(missing)} answers are to states not in the eval set ({missing[0]})")
    answers = [rejudge(a, states[a.state_id]) for a in stored]
    for before, after in zip(stored, answers, strict=True):
        _compare(row.label, f"answer {before.state_id}", before.model_dump(exclude={"queue_ms"}),
                 after.model_dump(exclude={"queue_ms"}), out, added)
    update: dict[str, Any] = {}
    if row.scores is not None:
        update["scores"] = score(answers)
        _compare(row.label, "scores", row.scores.model_dump(), update["scores"].model_dump(), out, added)
    return update, len(answers)


def _recount_row(row: ModelRow, matrix_dir: Path, states: dict[str, Any], out: list[Difference],
                 added: list[str]) -> tuple[ModelRow, int, int]:
    """A row's answers scored again, and its loop counted again (a reference row has a loop and no answers)."""
    update, n_answers = _recount_answers(row, matrix_dir, states, out, added)
    runs = 0
    if row.loop is not None:
        dirs = [_existing(d, matrix_dir / "loop" / Path(d).parent.name / Path(d).name) for d in row.loop.run_dirs]
        gone = [str(d) for d in dirs if not d.is_dir()]
        if gone:
            raise MatrixError(f"{row.label}: closed-loop run {gone[0]} is gone; the row cannot be recounted")
        loop = loop_result(row.loop.spec, dirs).model_copy(update={"run_dirs": row.loop.run_dirs})
        update["loop"] = loop
        runs = len(dirs)
        _compare(row.label, "loop", row.loop.model_dump(), loop.model_dump(), out, added)
    return row.model_copy(update=update), n_answers, runs


def recount(matrix_dir: Path, *, write: bool = False) -> Recount:
    report = load_matrix(matrix_dir / MATRIX_FILE)
    if report is None:
        raise MatrixError(f"{matrix_dir} holds no {MATRIX_FILE}")
    eval_file = _existing(report.eval_set_file, matrix_dir / Path(report.eval_set_file).name)
    meta, states = load_evalset(eval_file)
    if meta.sha256 != report.eval_set.sha256:
        raise MatrixError(f"{eval_file} is not the eval set this matrix was scored on "
                          f"(sha256 {meta.sha256[:12]} != {report.eval_set.sha256[:12]})")
    by_id = {s.state_id: s for s in states}
    differences: list[Difference] = []
    added: list[str] = []
    rows: list[ModelRow] = []
    answers = runs = 0
    for row in report.rows:
        new_row, n_answers, n_runs = _recount_row(row, matrix_dir, by_id, differences, added)
        rows.append(new_row)
        answers += n_answers
        runs += n_runs
    recounted = report.model_copy(update={"rows": rows})
    if write:
        atomic_write(matrix_dir / MATRIX_FILE, recounted.model_dump_json(indent=2))
        (matrix_dir / MARKDOWN_FILE).write_text(render_markdown(recounted))
        render_chart(recounted, matrix_dir / CHART_FILE)
    return Recount(report=recounted, rows_recounted=sum(r.answers_file is not None or r.loop is not None for r in rows),
                   answers_rescored=answers, loop_runs_recounted=runs, differences=differences, added=added)
