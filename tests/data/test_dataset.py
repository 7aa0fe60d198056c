"""`dataset build` on runs whose pools were planted tick by tick: pools, mix, dedup, split, formats, leaks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.files import sha256_file
from bloodwork.cli import app  # the whole CLI: its edge renders every error
from bloodwork.data.build import BuildError, BuildOptions, build_dataset
from bloodwork.data.dedup import deduplicate
from bloodwork.data.formats import POOLS, DatasetManifest, DatasetStats, DedupCounts
from bloodwork.data.mine import Example, RunView
from bloodwork.data.mix import MixError, parse_mix
from bloodwork.data.split import check_split_leak
from tests.data.conftest import POOL_OF_TICK, Story


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def built(planted: Story, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetStats]:
    out = tmp_path_factory.mktemp("ds") / "data"
    stats = build_dataset(planted.runs, out, BuildOptions(mix=parse_mix("golden=0.4,recovery=0.4,rejected=0.2"),
                                                          include_scripted=True, exact_lengths=False),
                          generator="test")
    return out, stats


def test_each_tick_lands_in_its_planted_pool(planted: Story):
    view = RunView(planted.runs[0])
    found = {e.tick: e.pool for e in view.examples({})}
    assert found == POOL_OF_TICK  # tick 1 (a PAGE_FAULT) is in no pool
    recovery = next(e for e in view.examples({}) if e.tick == 2)
    assert recovery.prompt == messages_at(view.paths.context, 2) and recovery.window_complete
    assert "streak from tick 1" in recovery.detail


def test_pools_are_disjoint_and_rows_keep_their_origin(built):
    out, _ = built
    for split in ("train", "test"):
        kto = rows(out / split / "kto.jsonl")
        assert kto, split
        ids = [r["meta"]["row_id"] for r in kto]
        assert len(ids) == len(set(ids))
        by_pool = {p: {(r["meta"]["prompt_sha256"], r["completion"][0]["content"]) for r in kto
                       if r["meta"]["pool"] == p} for p in POOLS}
        assert not by_pool["golden"] & by_pool["recovery"]
        assert not (by_pool["golden"] | by_pool["recovery"]) & by_pool["rejected"]
        for r in kto:
            meta = r["meta"]
            assert r["label"] == (meta["pool"] != "rejected")
            assert meta["provenance"] == "scripted" and meta["task"] == "test/hello" and meta["split"] == split
            assert POOL_OF_TICK[meta["tick"]] == meta["pool"]
        sft = rows(out / split / "sft.jsonl")
        assert {r["meta"]["pool"] for r in sft} <= {"golden", "recovery"}


def test_the_mix_is_applied_with_counts(built):
    out, stats = built
    for split in ("train", "test"):
        avail = stats.mix[split].available
        assert avail == {p: stats.after_dedup[split].get(p, 0) for p in POOLS}
        target = {"golden": 0.4, "recovery": 0.4, "rejected": 0.2}
        total = min(avail[p] / f for p, f in target.items())
        expected = {p: math.floor(total * f + 1e-9) for p, f in target.items()}
        got = {p: sum(r["meta"]["pool"] == p for r in rows(out / split / "kto.jsonl")) for p in POOLS}
        assert got == expected == stats.mix[split].selected
        assert stats.mix[split].limiting in ("golden", "recovery")
        assert len(rows(out / split / "sft.jsonl")) == expected["golden"] + expected["recovery"]


def test_mix_strings():
    assert parse_mix("15/65/20") == {"golden": 0.15, "recovery": 0.65, "rejected": 0.2}
    assert parse_mix("golden=1,rejected=1") == {"golden": 0.5, "recovery": 0.0, "rejected": 0.5}
    for bad in ("1/2", "golden=x", "silver=1", "0/0/0", "golden=-1,recovery=2"):
        with pytest.raises(MixError):
            parse_mix(bad)


def test_dedup_and_split_by_run(built, planted: Story):
    out, stats = built
    # tick 0 is the same state and answer in every run: one copy per split survives, and the test split
    # wins, so train loses its copy too; ticks 7 and 8 answer the same trap frame the same way in every
    # run (near duplicates).
    splits = json.loads((out / "splits.json").read_text())["groups"]
    train_runs = list(splits.values()).count("train")
    assert stats.dedup.exact == train_runs - 1
    assert stats.dedup.near > 0 and stats.dedup.cross_split >= 3
    train_prompts = {r["meta"]["prompt_sha256"] for r in rows(out / "train" / "kto.jsonl")}
    assert not train_prompts & {r["meta"]["prompt_sha256"] for r in rows(out / "test" / "kto.jsonl")}
    assert sorted(splits) == sorted(p.name for p in planted.runs)
    assert list(splits.values()).count("test") == 1
    for split in ("train", "test"):
        assert {r["meta"]["group"] for r in rows(out / split / "kto.jsonl")} <= {g for g, s in splits.items()
                                                                                  if s == split}
    assert stats.leak_check.ok and check_split_leak(out).ok


def test_split_check_catches_a_planted_leak(built, tmp_path: Path):
    out, _ = built
    leaky = tmp_path / "leaky"
    shutil.copytree(out, leaky)
    test_row = (leaky / "test" / "sft.jsonl").read_text().splitlines()[0]
    with open(leaky / "train" / "sft.jsonl", "a") as fh:
        fh.write(test_row + "\n")
    report = check_split_leak(leaky)
    assert not report.ok and report.shared_prompts == 1
    assert json.loads(test_row)["meta"]["group"] in report.shared_groups
    # the prompt is recomputed from the row: hiding the leak in the metadata does not hide it
    row = json.loads(test_row)
    row["meta"]["group"] = row["meta"]["run_id"] = "elsewhere"
    (leaky / "train" / "sft.jsonl").write_text(json.dumps(row) + "\n")
    hidden = check_split_leak(leaky)
    assert not hidden.ok and hidden.shared_prompts == 1 and not hidden.shared_groups


def test_files_load_with_datasets_and_the_manifest_hashes_them(built, planted: Story, tmp_path: Path):
    import datasets

    out, stats = built
    columns = {"sft": {"messages", "meta"}, "kto": {"prompt", "completion", "label", "meta"},
               "dpo": {"prompt", "chosen", "rejected", "meta"}}
    loaded = 0
    for name, n in stats.files.items():
        if not n:
            assert not (out / name).exists()
            continue
        ds = datasets.load_dataset("json", data_files=str(out / name), split="train", cache_dir=str(tmp_path))
        assert len(ds) == n and set(ds.column_names) == columns[Path(name).stem]
        loaded += 1
    assert loaded >= 4
    manifest = DatasetManifest.model_validate_json((out / "manifest.json").read_text())
    assert "failure_recovery_dataset_stats.json" in manifest.files and "splits.json" in manifest.files
    for name, entry in manifest.files.items():
        assert sha256_file(out / name) == entry.sha256
    runs = {p.name: p for p in planted.runs}
    for row in rows(out / "train" / "sft.jsonl"):
        meta = row["meta"]
        assert row["messages"][:-1] == messages_at(runs[meta["run_id"]] / "context", meta["tick"])
        assert row["messages"][-1]["role"] == "assistant"


def test_scripted_runs_are_excluded_by_default(planted: Story, tmp_path: Path):
    options = BuildOptions(mix=parse_mix("1/1/1"), exact_lengths=False)
    with pytest.raises(BuildError, match="no usable rows"):
        build_dataset(planted.runs, tmp_path / "none", options, generator="test")
    real = planted.pretend_real_run()
    stats = build_dataset([*planted.runs, real], tmp_path / "one", options, generator="test")
    assert stats.runs_used == 1 and stats.by_provenance == {"real": sum(stats.by_split.values())}
    assert sum(v for k, v in stats.runs_excluded.items() if "provenance scripted" in k) == len(planted.runs)


def test_cli_errors_are_one_line(tmp_path: Path):
    res = CliRunner().invoke(app, ["dataset", "build", str(tmp_path), "--out", str(tmp_path / "o"), "--mix", "1/2"])
    assert res.exit_code == 2 and "mix" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["dataset", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output
    for args in (["dataset", "build"], ["fork"], ["train"]):
        res = CliRunner().invoke(app, [*args, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output, args


def example(pool: str, run: str, tick: int, state: str, answer: str) -> Example:
    return Example(pool=pool, run_id=run, group=run, task="t", tick=tick, provenance="real", model="m", source="s",
                   prompt=[{"role": "system", "content": "isa"}, {"role": "user", "content": state}],
                   completion=answer, op=None, traps=[], detail="")


def test_dedup_refuses_an_answer_that_is_both_good_and_bad():
    counts = DedupCounts()
    words = "the register says ledger money parser is next and the slice shows the spec section two"
    kept = deduplicate([example("golden", "a", 1, "state one", "x"), example("rejected", "b", 1, "state one", "x"),
                        example("golden", "a", 2, "state two", "y"), example("recovery", "b", 2, "state two", "y"),
                        example("golden", "c", 3, f"{words} at tick 3", "z"),
                        example("golden", "c", 4, f"{words} at tick 4", "z"),
                        example("golden", "c", 5, f"{words} at tick 5", "other answer")], 0.9, counts)
    assert [(e.pool, e.run_id, e.tick) for e in kept] == [("recovery", "b", 2), ("golden", "c", 3),
                                                          ("golden", "c", 5)]
    assert (counts.contradictory, counts.cross_pool, counts.near, counts.exact) == (2, 1, 1, 0)


def test_train_length_is_chosen_from_the_measured_rows(built):
    from bloodwork.data.build import choose_train_length
    from bloodwork.data.formats import TRAIN_LENGTH_FILE, TrainLength

    out, stats = built
    saved = TrainLength.model_validate_json((out / TRAIN_LENGTH_FILE).read_text())
    assert stats.train_length == saved and saved.rows == len(rows(out / "train" / "sft.jsonl"))
    longest = saved.total_tokens.max or 0
    assert saved.chosen % 128 == 0 and saved.chosen - 128 < longest <= saved.chosen  # holds every train row
    assert saved.over["train/sft.jsonl"] == 0
    assert stats.distinct_states["run"].before >= stats.distinct_states["run"].after > 0
    assert set(stats.by_temperature) == {"0"}  # scripted runs: no sampling
    # a longer row than the cap is counted as one training would drop
    sft = out / "train" / "sft.jsonl"
    original = sft.read_text()
    row = json.loads(original.splitlines()[0])
    row["messages"][-1]["content"] = "x " * 20_000
    sft.write_text(original + json.dumps(row) + "\n")
    try:
        capped = choose_train_length(out, exact=False)
    finally:
        sft.write_text(original)
    assert capped.chosen == 4096 and capped.over["train/sft.jsonl"] == 1
