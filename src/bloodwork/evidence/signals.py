"""Per-tick behavioural signals of one run, read from its raw files only.

Sources: `run.json` (task metadata, config, provenance), `.journal.log` (tick, evict, probe, panic events;
the chain is verified first and only its verified prefix is used), `trace.jsonl` (each tick's pointer `d`
and frame), `context/ticks.jsonl` + `context/blobs.jsonl` (tokens per section, the history span and the
masking each tick's context had, the goal text and the start listing).
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bloodwork.chronos.files import load_blobs, read_jsonl
from bloodwork.chronos.records import EvictEvent, ProbeEvent, TickEvent, TraceRecord, iter_records, of_kind
from bloodwork.chronos.run import RunManifest, RunPaths, verified_events
from bloodwork.evidence.probes import ProbeScore, SemanticInfo, score_probes
from bloodwork.prompts import GOAL_PREFIX, START_LISTING

SECTIONS = ("system", "goal", "register", "slice", "history")
META_PATH_KEYS = ("files_to_implement", "patch_files", "test_files", "FAIL_TO_PASS")

RELEVANCE_DEFINITION = (
    "An op is goal-relevant when it touches a relevant path. Relevant files: the task metadata's "
    f"{', '.join(META_PATH_KEYS)} (test ids cut at '::'), every path named in the goal text (a word with a '/' "
    "or a file extension; a trailing '/' names a directory), and the files in the workspace when the task "
    "started (the start slice's listing, context tick 0). Relevant directories: those named in the goal and "
    "the parent directories of relevant files (never the workspace root). SYS_READ/SYS_WRITE/SYS_EDIT are "
    "relevant when their path (without '#page=') is a relevant file or lies under a relevant directory; "
    "SYS_EXEC when a word of its command is such a path, names a relevant directory (also as a dotted module "
    "prefix), or the command contains a command quoted in `backticks` in the goal; SYS_HALT always (it claims "
    "the goal). Ticks without a valid frame have no relevance and are left out of the share's n.")
REFETCH_DEFINITION = (
    "A SYS_READ of path P at tick t is a refetch when P's content was shown at an earlier tick (a history "
    "entry whose slice was read at d=P, or whose action was a SYS_WRITE of P) and no longer is at t: every "
    "such entry is outside tick t's recorded history span or has its observation masked, and t's own slice "
    "is not at P. Rate = refetches / SYS_READ ops.")


class Relevance(BaseModel):
    """The relevant paths this run's definition found, by source."""

    files: list[str]
    dirs: list[str]
    goal_commands: list[str]
    sources: dict[str, list[str]]


class TickSignals(BaseModel):
    tick: int
    tokens: dict[str, int]
    total: int
    budget: int
    over_budget: bool
    history_span: tuple[int, int] | None
    evicted: dict[str, int] = Field(description="tokens evicted at this tick, by section (evict events)")
    evicted_tokens: int
    evictions: int = Field(description="evict events at this tick")
    op: str | None
    target: str | None
    relevant: bool | None
    refetch: bool
    traps: list[str]
    violation: str | None
    panic: bool
    probe: ProbeScore | None = None


class RunSignals(BaseModel):
    manifest: RunManifest
    path: str
    goal: str
    journal_ok: bool
    tokens_exact: bool
    relevance: Relevance
    semantic: SemanticInfo | None
    ticks: list[TickSignals]


def norm_path(path: str) -> str:
    path = path.partition("#page=")[0].strip().strip("'\"`")
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


_PATHISH = re.compile(r"[\w.\-/]+")
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")


def paths_in_text(text: str) -> tuple[set[str], set[str]]:
    """Files and directories named in prose: words with a '/' or a file extension; URLs skipped."""
    files: set[str] = set()
    dirs: set[str] = set()
    for word in text.split():
        if "://" in word:
            continue
        for token in _PATHISH.findall(word):
            token = token.rstrip(".,")
            if token.endswith("/") and len(token) > 1:
                dirs.add(norm_path(token))
            elif "/" in token.strip("/") or _EXTENSION.search(token):
                files.add(norm_path(token))
    return {f for f in files if f}, {d for d in dirs if d}


def relevance_for(meta: dict[str, Any], goal: str, start_files: list[str]) -> Relevance:
    sources: dict[str, list[str]] = {}
    for key in META_PATH_KEYS:
        items = meta.get(key)
        if isinstance(items, list):
            sources[f"task_meta.{key}"] = sorted({norm_path(str(i).split("::")[0]) for i in items})
    goal_files, goal_dirs = paths_in_text(goal)
    sources["goal"] = sorted(goal_files | {d + "/" for d in goal_dirs})
    sources["start_listing"] = sorted(start_files)
    files = {p for key, items in sources.items() for p in items if not p.endswith("/")}
    dirs = set(goal_dirs)
    for f in files:
        parent = f.rpartition("/")[0]
        while parent:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    commands = [c.strip() for c in re.findall(r"`([^`\n]+)`", goal) if " " in c.strip()]
    return Relevance(files=sorted(files), dirs=sorted(dirs), goal_commands=commands, sources=sources)


def _path_relevant(path: str, rel: Relevance) -> bool:
    p = norm_path(path)
    return p in rel.files or p in rel.dirs or any(p.startswith(d + "/") for d in rel.dirs)


def op_relevant(op: dict[str, Any] | None, rel: Relevance) -> bool | None:
    if not op:
        return None
    name = op.get("name")
    if name == "SYS_HALT":
        return True
    if name in ("SYS_READ", "SYS_WRITE", "SYS_EDIT"):
        return _path_relevant(str(op.get("path", "")), rel)
    cmd = str(op.get("cmd", ""))
    if any(c in cmd for c in rel.goal_commands):
        return True
    try:
        words = shlex.split(cmd)
    except ValueError:
        words = cmd.split()
    tokens = {t for w in words for t in re.split(r"[\s;|&<>=(),:'\"]+", w) if t}
    return any(_path_relevant(t, rel) or any(t.startswith(d.replace("/", ".") + ".") for d in rel.dirs)
               for t in tokens)


def _start_files(tail: str) -> list[str]:
    _, found, listing = tail.partition(START_LISTING)
    if not found:
        return []
    files = []
    for line in listing.splitlines():
        if not line.startswith("./"):
            break
        files.append(norm_path(line))
    return sorted(files)


def _content_paths(trace: TraceRecord) -> tuple[str | None, str | None]:
    """The path whose content a tick's history entry carries: (its slice's, its action's)."""
    d = trace.d
    shown = norm_path(d) if d and "://" not in d else None
    op = (trace.frame or {}).get("op") or {}
    written = norm_path(op["path"]) if op.get("name") == "SYS_WRITE" else None
    return shown, written


def _refetches(trace: dict[int, TraceRecord], ctx: dict[int, dict[str, Any]]) -> set[int]:
    """O(1) a read: a path is still visible when its latest write, or its latest unmasked slice, is in the span
    (the span is contiguous and holds the newest entries, so an older showing is out whenever a newer one is)."""
    last_shown: dict[str, int] = {}
    last_written: dict[str, int] = {}
    out: set[int] = set()
    for t in sorted(trace):
        op = (trace[t].frame or {}).get("op") or {}
        shown_now, written_now = _content_paths(trace[t])
        if op.get("name") == "SYS_READ" and t in ctx:
            target = norm_path(op["path"])
            lo, hi = ctx[t].get("history") or (0, -1)
            masked_below = ctx[t].get("masked_below", -1)
            w, u = last_written.get(target), last_shown.get(target)
            visible = (target == shown_now or (w is not None and lo <= w <= hi)
                       or (u is not None and lo <= u <= hi and u >= masked_below))
            if (target in last_shown or target in last_written) and not visible:
                out.add(t)
        if shown_now:
            last_shown[shown_now] = t
        if written_now:
            last_written[written_now] = t
    return out


def read_run(run: Path, *, semantic: bool = True) -> RunSignals:
    paths = RunPaths(run)
    manifest = RunManifest.load(paths)
    events, report = verified_events(paths)
    journal_ok = report.ok
    blobs = load_blobs(paths.blobs)
    ctx = {r["tick"]: r for r in read_jsonl(paths.context_ticks)}
    trace = {r.tick: r for r in iter_records(paths.trace, TraceRecord)}
    goal_rec = next((r for r in ctx.values() if r.get("goal")), None)
    if goal_rec is None:
        raise ValueError(f"{run}: no tick's context holds the goal")
    goal = blobs[goal_rec["goal"]].removeprefix(GOAL_PREFIX)
    start = _start_files(blobs[ctx[min(ctx)]["tail"]]) if ctx else []
    relevance = relevance_for(manifest.task_meta, goal, start)

    tick_events = {e.tick: e.data for e in of_kind(events, TickEvent)}
    evicted: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    evictions: dict[int, int] = defaultdict(int)
    for ev in of_kind(events, EvictEvent):
        evicted[ev.tick][ev.data.section] += ev.data.tokens
        evictions[ev.tick] += 1
    panics = {e.tick for e in events if e.kind == "panic"}
    probes = [{"tick": e.tick, "answer": e.data.answer, "error": e.data.error} for e in of_kind(events, ProbeEvent)]
    scores, info = score_probes(goal, probes, semantic=semantic) if probes else ([], None)
    by_tick = {s.tick: s for s in scores}
    committed = {t: trace[t] for t in tick_events if t in trace}
    refetch = _refetches(committed, ctx)

    ticks = []
    for t in sorted(tick_events):
        rec, td, tr = ctx.get(t, {}), tick_events[t], committed.get(t)
        op = (tr.frame or {}).get("op") if tr else None
        span = rec.get("history")
        ticks.append(TickSignals(
            tick=t, tokens={s: int(rec.get("tokens", {}).get(s, 0)) for s in SECTIONS},
            total=int(rec.get("total", td.context_tokens)), budget=int(rec.get("budget", 0)),
            over_budget=bool(rec.get("over_budget")), history_span=tuple(span) if span else None,
            evicted=dict(evicted.get(t, {})), evicted_tokens=sum(evicted.get(t, {}).values()),
            evictions=evictions.get(t, 0), op=td.op,
            target=(op.get("path") or op.get("cmd") or op.get("reason")) if op else None,
            relevant=op_relevant(op, relevance), refetch=t in refetch, traps=list(td.traps),
            violation=td.violation, panic=t in panics, probe=by_tick.get(t)))
    exact = all(r.get("exact", False) for r in ctx.values()) if ctx else False
    return RunSignals(manifest=manifest, path=str(run), goal=goal, journal_ok=journal_ok, tokens_exact=exact,
                      relevance=relevance, semantic=info, ticks=ticks)
