"""`bloodwork profile`: the context-degradation profile of runs, from their raw files only.

For each run: per-tick signals (`bloodwork.evidence.signals`), and two verdicts with the numbers behind them.

- Late-stage forgetting: each signal (goal-relevant op share, lexical and semantic probe scores) is
  compared between the first and the last third of the run's ticks with a one-sided Mann-Whitney U test.
  A signal drops when p < ALPHA / (signals tested) (Bonferroni) and Cliff's delta >= MIN_DELTA (a
  "medium" effect: a p-value alone flags small differences once n is large — the op signal has ~40 values
  a third in a 120-tick run, thousands in a long one — and a delta alone flags noise at small n). The
  run is flagged when any signal drops; the onset is the earliest tick where a dropping signal's best
  single step down starts. A signal with fewer than MIN_N values in
  either third is not tested, and a run with no tested signal has no verdict (None), not a clean one.
- Eviction effectiveness: max and p95 context tokens against the budget, the ticks over it, and the
  least-squares slope of context tokens per tick, over the whole run and over its second half (a bounded
  policy fills its budget in the first ticks, then stays flat); evicted tokens by section; the share of
  ticks whose context still held the goal; the refetch rate.

These are fixed in code rather than tuned per run, and recorded in every profile (`parameters`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from bloodwork.chronos.run import find_runs
from bloodwork.errors import BloodworkError
from bloodwork.evidence.heatmap import (
    ComparisonSeries,
    HeatmapFile,
    ProbeMetric,
    choose_bin,
    plot_comparison,
    plot_probes,
    plot_sections,
    run_heatmap,
)
from bloodwork.evidence.probes import SemanticInfo
from bloodwork.evidence.signals import (
    REFETCH_DEFINITION,
    RELEVANCE_DEFINITION,
    SECTIONS,
    Relevance,
    RunSignals,
    TickSignals,
    read_run,
)
from bloodwork.evidence.stats import Rate, percentile, wilson
from bloodwork.evidence.trend import DropTest, Slope, StepDown, drop_test, ols_slope, step_down

ALPHA = 0.01
MIN_DELTA = 0.33
MIN_N = 5
SIGNALS = ("goal_relevant_ops", "probe_lexical", "probe_semantic")
PROFILE_FILE = "context_decay_profile.json"
HEATMAP_FILE = "context_degradation_heatmap.json"
SECTIONS_PNG = "context_degradation_heatmap.png"
PROBES_PNG = "goal_probe_heatmap.png"
TRAILING_MIN = 10  # ticks: the comparison figure's trailing goal-relevant share smooths over at least this many


class ProfileError(BloodworkError, ValueError):
    """No runs to profile, or a run whose files cannot be profiled."""


class Parameters(BaseModel):
    alpha: float = ALPHA
    min_cliffs_delta: float = MIN_DELTA
    min_n_per_third: int = MIN_N
    thirds: str = "early: tick < T/3, late: tick >= 2T/3, T = last committed tick + 1"
    relevance: str = RELEVANCE_DEFINITION
    refetch: str = REFETCH_DEFINITION
    forgetting_rule: str = ("a signal drops when its one-sided Mann-Whitney p < alpha / (signals tested) and "
                            "Cliff's delta >= min_cliffs_delta; a run is flagged when any signal drops; onset = "
                            "earliest least-squares step-down tick among the dropping signals")


class SignalVerdict(BaseModel):
    signal: str
    test: DropTest
    step: StepDown | None
    alpha: float | None
    drop: bool | None


class Forgetting(BaseModel):
    flagged: bool | None
    onset_tick: int | None
    early_ticks: tuple[int, int]
    late_ticks: tuple[int, int]
    signals: list[SignalVerdict]


class Eviction(BaseModel):
    policy: str
    budget: int
    tokens_exact: bool
    n_ticks: int
    max_tokens: int | None
    p95_tokens: float | None
    mean_tokens: float | None
    ticks_over_budget: int
    within_budget: bool
    slope_all: Slope
    slope_second_half: Slope
    evictions: int
    evicted_tokens: dict[str, int]
    goal_in_context: Rate
    refetch: Rate


class RunProfile(BaseModel):
    run_id: str
    path: str
    task: str
    model: str
    seed: int
    provenance: str
    status: str
    ticks: int
    journal_ok: bool
    context: dict[str, object]
    probe_every: int
    goal: str
    relevance: Relevance
    forgetting: Forgetting
    eviction: Eviction
    traps: dict[str, int]
    panics: int
    schema_violations: Rate
    per_tick: list[TickSignals]


class ComparisonRow(BaseModel):
    run_id: str
    policy: str
    budget: int
    n_ticks: int
    max_tokens: int | None
    p95_tokens: float | None
    ticks_over_budget: int
    slope_second_half: float | None
    evicted_tokens: int
    goal_in_context: float | None
    refetch_rate: float | None
    refetch_n: int
    forgetting: bool | None
    onset_tick: int | None
    relevant_early: float | None
    relevant_late: float | None
    probe_early: float | None
    probe_late: float | None


class Comparison(BaseModel):
    task: str
    model: str
    seed: int
    probe_metric: ProbeMetric
    rows: list[ComparisonRow]
    png: str | None


class ContextDecayProfile(BaseModel):
    generator: str
    runs: list[RunProfile]
    provenance: dict[str, int]
    semantic: SemanticInfo
    parameters: Parameters
    comparisons: list[Comparison] | None = None
    not_compared: list[str] | None = None
    journals_failing_verify: list[str]
    files: list[str]


def _thirds(run: RunSignals) -> tuple[tuple[int, int], tuple[int, int]]:
    end = max((t.tick for t in run.ticks), default=-1) + 1
    return (0, -(-end // 3)), (-(-2 * end // 3), end)


def _series(run: RunSignals, signal: str) -> tuple[list[int], list[float]]:
    if signal == "goal_relevant_ops":
        pairs = [(t.tick, float(t.relevant)) for t in run.ticks if t.relevant is not None]
    else:
        attr = signal.removeprefix("probe_")
        pairs = [(t.tick, getattr(t.probe, attr)) for t in run.ticks if t.probe is not None]
        pairs = [(tick, v) for tick, v in pairs if v is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def forgetting(run: RunSignals) -> Forgetting:
    early, late = _thirds(run)
    verdicts = []
    for signal in SIGNALS:
        ticks, values = _series(run, signal)
        if not values:
            continue
        e = [v for t, v in zip(ticks, values, strict=True) if early[0] <= t < early[1]]
        la = [v for t, v in zip(ticks, values, strict=True) if late[0] <= t < late[1]]
        verdicts.append(SignalVerdict(signal=signal, test=drop_test(e, la), step=step_down(ticks, values),
                                      alpha=None, drop=None))
    tested = [v for v in verdicts if v.test.n_early >= MIN_N and v.test.n_late >= MIN_N]
    for v in tested:
        v.alpha = ALPHA / len(tested)
        v.drop = bool(v.test.p_value is not None and v.test.p_value < v.alpha
                      and (v.test.cliffs_delta or 0) >= MIN_DELTA)
    dropping = [v for v in tested if v.drop]
    onsets = [v.step.tick for v in dropping if v.step is not None]
    return Forgetting(flagged=any(v.drop for v in tested) if tested else None, onset_tick=min(onsets, default=None),
                      early_ticks=early, late_ticks=late, signals=verdicts)


def eviction(run: RunSignals) -> Eviction:
    ticks = [t.tick for t in run.ticks]
    totals = [t.total for t in run.ticks]
    budget = run.ticks[0].budget if run.ticks else 0
    half = (max(ticks, default=-1) + 1) / 2
    second = [(t, v) for t, v in zip(ticks, totals, strict=True) if t >= half]
    by_section: Counter[str] = Counter()
    for t in run.ticks:
        by_section.update(t.evicted)
    reads = [t for t in run.ticks if t.op == "SYS_READ"]
    over = sum(1 for v in totals if v > budget)
    return Eviction(
        policy=str(run.manifest.config.get("context", {}).get("policy")), budget=budget, tokens_exact=run.tokens_exact,
        n_ticks=len(ticks), max_tokens=max(totals, default=None), p95_tokens=percentile(totals, 95),
        mean_tokens=round(sum(totals) / len(totals), 6) if totals else None, ticks_over_budget=over,
        within_budget=over == 0, slope_all=ols_slope(ticks, totals),
        slope_second_half=ols_slope([p[0] for p in second], [p[1] for p in second]),
        evictions=sum(t.evictions for t in run.ticks), evicted_tokens=dict(sorted(by_section.items())),
        goal_in_context=wilson(sum(1 for t in run.ticks if t.tokens["goal"] > 0), len(run.ticks)),
        refetch=wilson(sum(1 for t in reads if t.refetch), len(reads)))


def run_profile(run: RunSignals) -> RunProfile:
    m = run.manifest
    traps = Counter(k for t in run.ticks for k in t.traps)
    return RunProfile(
        run_id=m.run_id, path=run.path, task=m.task, model=m.model, seed=m.seed, provenance=m.provenance.value,
        status=m.status.value, ticks=len(run.ticks), journal_ok=run.journal_ok, context=m.config.get("context", {}),
        probe_every=int(m.config.get("probe_every", 0)), goal=run.goal, relevance=run.relevance,
        forgetting=forgetting(run), eviction=eviction(run), traps=dict(traps.most_common()),
        panics=sum(1 for t in run.ticks if t.panic),
        schema_violations=wilson(sum(1 for t in run.ticks if t.violation), len(run.ticks)),
        per_tick=run.ticks)


def _signal(profile: RunProfile, name: str) -> DropTest | None:
    return next((s.test for s in profile.forgetting.signals if s.signal == name), None)


def comparison_row(p: RunProfile, metric: ProbeMetric) -> ComparisonRow:
    ev = p.eviction
    relevant, probe = _signal(p, "goal_relevant_ops"), _signal(p, f"probe_{metric}")
    return ComparisonRow(
        run_id=p.run_id, policy=ev.policy, budget=ev.budget, n_ticks=ev.n_ticks, max_tokens=ev.max_tokens,
        p95_tokens=ev.p95_tokens, ticks_over_budget=ev.ticks_over_budget,
        slope_second_half=ev.slope_second_half.slope, evicted_tokens=sum(ev.evicted_tokens.values()),
        goal_in_context=ev.goal_in_context.rate, refetch_rate=ev.refetch.rate, refetch_n=ev.refetch.n,
        forgetting=p.forgetting.flagged, onset_tick=p.forgetting.onset_tick,
        relevant_early=relevant.mean_early if relevant else None,
        relevant_late=relevant.mean_late if relevant else None,
        probe_early=probe.mean_early if probe else None, probe_late=probe.mean_late if probe else None)


def comparison_series(run: RunSignals, metric: ProbeMetric, window: int) -> ComparisonSeries:
    probes = [(t.tick, getattr(t.probe, metric)) for t in run.ticks if t.probe is not None]
    probes = [(tick, v) for tick, v in probes if v is not None]
    shares: list[tuple[int, float]] = []
    for i, t in enumerate(run.ticks):
        recent = [x.relevant for x in run.ticks[max(0, i - window + 1): i + 1] if x.relevant is not None]
        if recent:
            shares.append((t.tick, sum(recent) / len(recent)))
    return ComparisonSeries(
        label=f"{run.manifest.config.get('context', {}).get('policy')} · {run.manifest.run_id}"[:60],
        budget=run.ticks[0].budget if run.ticks else 0, ticks=[t.tick for t in run.ticks],
        tokens=[t.total for t in run.ticks], probe_ticks=[p[0] for p in probes], probe=[p[1] for p in probes],
        relevant_ticks=[s[0] for s in shares], relevant_share=[s[1] for s in shares])


def compare_runs(runs: Sequence[RunSignals], profiles: Sequence[RunProfile], metric: ProbeMetric, window: int,
                 out: Path, plots: bool) -> tuple[list[Comparison], list[str]]:
    """Runs grouped by (task, model, seed); a group is compared when it holds at least two policies."""
    groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        groups[(r.manifest.task, r.manifest.model, r.manifest.seed)].append(i)
    comparisons: list[Comparison] = []
    skipped: list[str] = []
    for (task, model, seed), members in sorted(groups.items()):
        policies = {profiles[i].eviction.policy for i in members}
        if len(policies) < 2:
            skipped.append(f"{task} / {model} / seed {seed}: {len(members)} run(s), policies {sorted(policies)}")
            continue
        members.sort(key=lambda i: (profiles[i].eviction.policy, profiles[i].run_id))
        png = None
        if plots:
            png = f"context_policy_comparison{f'_{len(comparisons) + 1}' if comparisons else ''}.png"
            plot_comparison([comparison_series(runs[i], metric, window) for i in members],
                            f"Context policies on {task} (seed {seed})\n{model}"[:160], metric, window, out / png)
        comparisons.append(Comparison(task=task, model=model, seed=seed, probe_metric=metric, png=png,
                                      rows=[comparison_row(profiles[i], metric) for i in members]))
    return comparisons, skipped


def _matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed: the heatmap numbers are in the JSON, the PNGs were not drawn"
    return None


def profile_runs(run_dirs: Sequence[Path], out_dir: Path, compare: bool = False, *,
                 generator: str = "bloodwork profile", bin_ticks: int | None = None,
                 semantic: bool = True) -> ContextDecayProfile:
    """Profiles every run under `run_dirs` (runs, sweeps or folders of runs) and writes the files into
    `out_dir`: context_decay_profile.json, context_degradation_heatmap.json and the PNGs (plus one
    comparison PNG per compared group with `compare`). `generator` is the command line recorded in them."""
    try:
        dirs = find_runs(list(run_dirs))
    except ValueError as err:
        raise ProfileError(str(err)) from err
    runs: list[RunSignals] = []
    for d in dirs:
        try:
            run = read_run(d, semantic=semantic)
        except (ValueError, KeyError, OSError) as err:
            raise ProfileError(f"{d}: cannot be profiled: {err}") from err
        if run.manifest.run_id not in {r.manifest.run_id for r in runs}:
            runs.append(run)
    info = next((r.semantic for r in runs if r.semantic is not None), None) or SemanticInfo(
        available=False, reason="no run holds a probe event")
    metric: ProbeMetric = "semantic" if info.available else "lexical"
    profiles = [run_profile(r) for r in runs]
    out_dir.mkdir(parents=True, exist_ok=True)

    probe_every = max((p.probe_every for p in profiles), default=0)
    size = bin_ticks or choose_bin(max((p.ticks for p in profiles), default=1), probe_every)
    maps = [run_heatmap(r, size, metric) for r in runs]
    drawn = [m for m in maps if m.bins]
    missing = _matplotlib_missing() or (None if drawn else "no run has a committed tick")
    not_drawn: dict[str, str] = {}
    pngs: list[str] = []
    if missing is None:
        plot_sections(drawn, size, out_dir / SECTIONS_PNG)
        pngs.append(SECTIONS_PNG)
        if any(m.probe_n and max(m.probe_n) for m in drawn):
            plot_probes(drawn, size, metric, out_dir / PROBES_PNG)
            pngs.append(PROBES_PNG)
        else:
            not_drawn[PROBES_PNG] = "no run holds a scored probe"
    else:
        not_drawn = {SECTIONS_PNG: missing, PROBES_PNG: missing}
    heat = HeatmapFile(generator=generator, bin_ticks=size, sections=list(SECTIONS), probe_metric=metric,
                       probe_score_definition=f"mean {metric} score of the probes asked in the bin", runs=maps,
                       pngs=pngs, pngs_not_drawn=not_drawn)
    (out_dir / HEATMAP_FILE).write_text(heat.model_dump_json(indent=1))

    comparisons = skipped = None
    if compare:
        window = max(TRAILING_MIN, size)
        comparisons, skipped = compare_runs(runs, profiles, metric, window, out_dir, missing is None)
        pngs += [c.png for c in comparisons if c.png]
    report = ContextDecayProfile(
        generator=generator, runs=profiles, provenance=dict(Counter(p.provenance for p in profiles)), semantic=info,
        parameters=Parameters(), comparisons=comparisons, not_compared=skipped,
        journals_failing_verify=[p.run_id for p in profiles if not p.journal_ok],
        files=[PROFILE_FILE, HEATMAP_FILE, *pngs])
    (out_dir / PROFILE_FILE).write_text(report.model_dump_json(indent=1))
    return report
