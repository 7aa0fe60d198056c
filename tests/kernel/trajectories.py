"""Labelled SCRIPTED trajectories for the trap detectors: healthy work that must trap nothing, and
pathological agents that must trap, panic and die at the tick the default thresholds imply.

Shared by tests/kernel/test_detector_bench.py (one of each kind, in `make test`) and bench/detectors.py
(all of them, with each detector's confusion table). Every agent here is a script or a task's reference
policy (`expert:TASK`): its runs are tagged `provenance: scripted` or `expert` and say nothing about a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.run import RunPaths
from bloodwork.kernel import Kernel, KernelConfig, RunResult
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.base import Task
from bloodwork.tasks.folder import FolderTask
from bloodwork.tasks.ops import scenario_names
from bloodwork.tasks.registry import BUILTIN, builtin_task_dirs, load_task
from bloodwork.tasks.repofix import builtin_instances

Label = Literal["healthy", "pathological"]
DEFAULTS = KernelConfig()
BUDGET = DEFAULTS.panic_budget
TRAPS = DEFAULTS.traps
# Death ticks under the default thresholds, from the rules (ticks count from 0; each panic resets the streaks):
STREAK_DEATH = BUDGET * TRAPS.panic_streak - 1  # one trap a tick: a panic every `panic_streak` ticks
WATCHDOG_DEATH = BUDGET * TRAPS.watchdog_repeats - 1  # repeats - 1 runs, then the blocked one panics
OSCILLATION_DEATH = BUDGET * 4 - 1  # A, B, A, then B is blocked
# Two writes flipping a file between two contents: after a panic the first write finds the file already holding
# its content (no change), so each round takes one tick more.
WRITE_OSCILLATION_DEATH = BUDGET * 5 - 1
IDLE_DEATH = BUDGET * TRAPS.thrash_idle_ticks  # tick 0 shows something new; then `thrash_idle_ticks` idle ticks


def frame(op: dict[str, Any], thought: str = "t", q: str = "q") -> str:
    return json.dumps({"thought": thought, "q_next": q, "op": op})


def read(path: str, page: int = 0) -> str:
    return frame({"name": "SYS_READ", "path": path, **({"page": page} if page else {})})


def exec_(cmd: str) -> str:
    return frame({"name": "SYS_EXEC", "cmd": cmd})


def halt(reason: str = "done") -> str:
    return frame({"name": "SYS_HALT", "reason": reason})


@dataclass
class Trajectory:
    name: str
    label: Label
    build: Callable[[Path], tuple[Task, str]]  # root -> (task, oracle spec)
    max_ticks: int
    pathology: str | None = None  # the trap kind meant to catch it
    death_tick: int | None = None  # where the default thresholds must kill it
    seed: int = 1
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, root: Path, config: dict[str, Any] | None = None) -> tuple[RunResult, RunPaths]:
        root.mkdir(parents=True, exist_ok=True)
        task, spec = self.build(root)
        cfg = KernelConfig.model_validate({"max_ticks": self.max_ticks, **(config or {})})
        oracle = make_oracle(spec)
        try:
            kernel = Kernel.create(task, oracle, out_dir=root / "runs", config=cfg, seed=self.seed,
                                   chaos=ChaosProfile(name="off", rates={}), run_id=self.name)
            return kernel.run(), kernel.paths
        finally:
            if close := getattr(oracle, "close", None):
                close()


# -- tasks ---------------------------------------------------------------------------------------------------

def folder_task(root: Path, files: dict[str, str], hidden: dict[str, str], goal: str) -> FolderTask:
    folder = root / "task"
    for base, content in (("files", files), ("hidden", hidden)):
        for name, text in content.items():
            path = folder / base / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (folder / "hidden").mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(yaml.safe_dump({
        "id": "bench/" + root.name, "kind": "unit", "synthetic": True, "goal": goal,
        "verifier": {"command": "python3 -m pytest -q -p no:cacheprovider hidden", "timeout_s": 60}}))
    return FolderTask(folder)


HELLO_FILES = {"a.txt": "alpha\n", "b.txt": "beta\n", "sub/c.txt": "gamma\n",
               "test_smoke.py": "def test_alpha():\n    assert open('a.txt').read() == 'alpha\\n'\n",
               "notes/long.md": "".join(f"note {i:04d}: " + "words " * 12 + "\n" for i in range(300))}
HELLO_HIDDEN = {"test_hello.py": "from pathlib import Path\n\n\ndef test_hello():\n"
                                 "    assert Path('hello.txt').read_text().strip() == 'hello'\n"}


def hello_task(root: Path) -> FolderTask:
    return folder_task(root, HELLO_FILES, HELLO_HIDDEN, "Write hello.txt containing hello.")


def scripted(root: Path, replies: list[str]) -> str:
    script = root / "replies.yaml"
    script.write_text(yaml.safe_dump(replies))
    return f"scripted:{script}"


# The developer's suite: 40 parametrized cases of a lookup table; each fix adds one entry. With
# `-vv --tb=line -rA` the output is ~7.7 KB when all pass and ~0.66 KB more per failing case.
REGION_NAMES = ("north-coast", "south-valley", "east-harbour", "west-plains", "central-hills", "lake-district",
                "river-delta", "high-desert", "pine-forest", "salt-flats", "red-canyon", "green-meadow",
                "stone-bridge", "iron-gate", "silver-bay", "golden-field", "white-cliffs", "black-marsh",
                "blue-lagoon", "grey-moor", "amber-ridge", "copper-mine", "maple-grove", "cedar-point",
                "willow-creek", "aspen-park", "birch-hollow", "oak-crossing", "elm-square", "ash-ford", "yew-end",
                "holly-bank", "fox-den", "heron-pool", "owl-tower", "lark-rise", "wren-hedge", "kite-hill",
                "swan-reach", "crane-marsh")
REGIONS = [(f"region-{i:02d}-{n}-depot", f"CARRIER-{i:02d}-{n.upper()}") for i, n in enumerate(REGION_NAMES)]
LABELS_TEST = f'''import pytest

from labels import carrier

REGIONS = {REGIONS!r}


@pytest.mark.parametrize(("region", "code"), REGIONS, ids=[r for r, _ in REGIONS])
def test_carrier_code_for_region(region, code):
    got = carrier(region)
    assert got == code, f"carrier({{region!r}}) gave {{got!r}}; every region needs its code in labels.TABLE"
'''


def labels_module(known: int, revision: int = 0) -> str:
    body = "".join(f"    {r!r}: {c!r},\n" for r, c in REGIONS[:known])
    return (f'"""Shipping labels: the carrier code of each region."""\n\n# revision {revision}\nTABLE = {{\n{body}}}\n'
            '\n\ndef carrier(region):\n    return TABLE.get(region, "UNKNOWN")\n')


def labels_task(root: Path, known: int) -> FolderTask:
    return folder_task(root, {"labels.py": labels_module(known), "tests/test_labels.py": LABELS_TEST},
                       {"test_labels_hidden.py": LABELS_TEST},
                       "Make every test in tests/ pass: labels.TABLE needs the carrier code of every region.")


def developer(cycles: int = 40, known: int = 22, flags: str = "-vv --tb=line -rA", whole_file: bool = False,
              page_reads: tuple[int, ...] = (5, 20)) -> Callable[[Path], tuple[Task, str]]:
    """Edit, rerun the tests, `cycles` times. Fixes go one region at a time; the other edits only bump a
    revision comment, so the test output repeats on a changed workspace. After cycles in `page_reads` it
    reads page 1 of the last run's spilled output. Then a last run and a halt."""
    def build(root: Path) -> tuple[Task, str]:
        task = labels_task(root, known)
        replies: list[str] = []
        fixed = known
        run = exec_(f"python3 -m pytest {flags} -p no:cacheprovider tests")
        for cycle in range(cycles):
            fixes_left = len(REGIONS) - fixed
            fix = fixes_left > 0 and (cycle % 2 == 0 or fixes_left >= cycles - cycle)
            if fix:
                fixed += 1
            if whole_file:
                op = {"name": "SYS_WRITE", "path": "labels.py", "content": labels_module(fixed, cycle + 1)}
            elif fix:
                r, c = REGIONS[fixed - 1]
                op = {"name": "SYS_EDIT", "path": "labels.py", "search": "TABLE = {\n",
                      "replace": f"TABLE = {{\n    {r!r}: {c!r},\n"}
            else:
                op = {"name": "SYS_EDIT", "path": "labels.py", "search": "# revision ",
                      "replace": f"# revision {cycle + 1}.", }
            replies += [frame(op), run]
            if cycle in page_reads:
                replies.append(read(f"spill://exec-{len(replies) - 1}.out", 1))
        replies += [run, halt("all region tests pass")]
        return task, scripted(root, replies)
    return build


def expert(task_id: str) -> Callable[[Path], tuple[Task, str]]:
    """The task's reference policy (`expert:TASK`, bloodwork.experts), on a fresh start of the task."""
    return lambda root: (load_task(task_id), f"expert:{task_id}")


# Every built-in task's expert, with the ticks it needs at most (a run that halts earlier ends there).
EXPERT_TICKS = {"long-haul": 60, "repo-fix": 30, "ops-blindbox": 30}


def builtin_task_ids() -> list[str]:
    return ([str(d.relative_to(BUILTIN)) for d in builtin_task_dirs()]
            + [f"repo-fix/{inst.instance_id}" for inst in builtin_instances()]
            + [f"ops-blindbox/{s}" for s in scenario_names()])


def replies_on_hello(replies: list[str]) -> Callable[[Path], tuple[Task, str]]:
    return lambda root: (hello_task(root), scripted(root, replies))


# -- the labelled set -------------------------------------------------------------------------------------------

def _healthy() -> list[Trajectory]:
    out = [
        Trajectory("dev-40-vv", "healthy", developer(), 90, notes="40 edit+rerun cycles, 5-20 KB of output a run"),
        Trajectory("dev-12-whole-file", "healthy", developer(12, 34, whole_file=True, page_reads=(3,)), 30),
        Trajectory("dev-12-tb-short", "healthy", developer(12, 30, "-q --tb=short", page_reads=(2,)), 30),
        Trajectory("dev-10-vv-tb-short", "healthy", developer(10, 34, "-vv --tb=short"), 25),
        Trajectory("dev-10-q", "healthy", developer(10, 36, "-q", page_reads=()), 25),
        Trajectory("dev-10-rA-pages", "healthy", developer(10, 32, "-q -rA", page_reads=(1, 3, 5, 7)), 30),
        Trajectory("dev-12-fix-every-cycle", "healthy", developer(12, 28, "-vv --tb=line -rA"), 30),
        Trajectory("dev-12-fix-late", "healthy", developer(12, 38, "-vv --tb=line -rA"), 30),
    ]
    # Reading: every file once, then a long file page by page; with a listing and a grep in between.
    pages = [read("notes/long.md", p) for p in range(8)]
    out.append(Trajectory("reader-pages", "healthy", replies_on_hello(
        [exec_("ls -R"), read("a.txt"), read("b.txt"), read("sub/c.txt"), *pages, exec_("grep -c note notes/long.md"),
         frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"}), halt()]), 20))
    out.append(Trajectory("reader-spill", "healthy", replies_on_hello(
        [exec_("cat notes/long.md"), *[read("spill://exec-0.out", p) for p in range(8)],
         frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"}), halt()]), 20))
    out.append(Trajectory("reader-grep", "healthy", replies_on_hello(
        [exec_(f"grep -n 'note 0{i}' notes/long.md") for i in range(10)]
        + [frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"}), halt()]), 20))
    # Debugging with a revert: run, edit, run, revert (back to a world seen before), run, the real fix, run.
    fix = frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"})
    wrong = frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "helo\n"})
    check = exec_("cat hello.txt; python3 -m pytest -q -p no:cacheprovider test_smoke.py")
    out.append(Trajectory("debug-revert", "healthy", replies_on_hello(
        [check, wrong, check, frame({"name": "SYS_EXEC", "cmd": "rm hello.txt"}), check, wrong, check, fix, check,
         halt()]), 12))
    # Waiting on a background job with backoff: each poll is another op; the job's file appears meanwhile.
    out.append(Trajectory("poll-backoff", "healthy", replies_on_hello(
        [exec_("(sleep 1; echo done > job.status) > /dev/null 2>&1 &"),
         *[exec_(f"sleep {0.3 * (i + 1):.1f}; cat job.status 2>/dev/null || echo pending") for i in range(5)], fix,
         halt()]), 10))
    # Borderline cases, healthy but close to a threshold (they show what a tighter one would cost): polling a
    # job with the same command (the same "pending" on an unchanged workspace two or three times), and
    # re-reading files already seen, as an agent does after its context dropped them (four ticks with nothing new).
    out.append(Trajectory("poll-same-command", "healthy", replies_on_hello(
        [exec_("(sleep 1.5; echo done > job.status) > /dev/null 2>&1 &"),
         *[exec_("sleep 0.5; cat job.status 2>/dev/null || echo pending")] * 4, fix, halt()]), 10,
        notes="how many polls see 'pending' depends on the machine's speed"))
    out.append(Trajectory("reread-after-eviction", "healthy", replies_on_hello(
        [read("a.txt"), read("b.txt"), read("sub/c.txt"), read("notes/long.md"), read("a.txt"), read("b.txt"),
         read("sub/c.txt"), read("notes/long.md"), fix, halt()]), 12))
    # Many small files written, each checked.
    out.append(Trajectory("writer-check", "healthy", replies_on_hello(
        [r for i in range(12) for r in (frame({"name": "SYS_WRITE", "path": f"out/part{i}.txt", "content": f"{i}\n"}),
                                        exec_("cat out/*.txt | wc -l"))] + [fix, halt()]), 30))
    for task_id in builtin_task_ids():
        out.append(Trajectory(expert_name(task_id), "healthy", expert(task_id), EXPERT_TICKS[task_id.split("/")[0]],
                              seed=11, notes="the task's reference policy (expert:TASK)"))
    return out


def expert_name(task_id: str) -> str:
    return "expert-" + task_id.replace("/", "-")


def _pathological() -> list[Trajectory]:
    out = []
    garbage = ["I think I should read the file first.", "```json\n{\"thought\": \"x\"}\n```",
               frame({"name": "SYS_READ", "path": "a.txt"}) * 2, frame({"name": "SYS_READ", "path": "a.txt"})[:30]]
    for i, text in enumerate(garbage):
        out.append(Trajectory(f"garbage-{i}", "pathological", replies_on_hello([text] * 12), 12,
                              "SCHEMA_VIOLATION", STREAK_DEATH))
    missing = [read("missing.txt"), read("sub/nothing.py"), read("a.txt", 5),
               frame({"name": "SYS_EDIT", "path": "gone.py", "search": "x", "replace": "y"})]
    for i, op in enumerate(missing):
        out.append(Trajectory(f"missing-{i}", "pathological", replies_on_hello([op] * 12), 12,
                              "PAGE_FAULT", STREAK_DEATH))
    pairs = [(read("a.txt"), read("b.txt")), (exec_("cat a.txt"), exec_("cat b.txt")),
             (read("a.txt"), exec_("ls")),
             (frame({"name": "SYS_WRITE", "path": "x.txt", "content": "one\n"}),
              frame({"name": "SYS_WRITE", "path": "x.txt", "content": "two\n"}))]
    for i, (a, b) in enumerate(pairs):
        # Writes flip the world between two states, so their oscillation shows one op later (A B A B, then A).
        death = WRITE_OSCILLATION_DEATH if i == 3 else OSCILLATION_DEATH
        out.append(Trajectory(f"oscillate-{i}", "pathological", replies_on_hello([a, b] * 10), 20,
                              "THRASHING", death))
    halts = [[halt()] * 12, [halt(f"done, attempt {i}") for i in range(12)], [read("a.txt")] + [halt()] * 11]
    for i, replies in enumerate(halts):
        out.append(Trajectory(f"illegal-halt-{i}", "pathological", replies_on_hello(replies), 12, "ILLEGAL_HALT",
                              STREAK_DEATH + (1 if i == 2 else 0)))
    for i, cmd in enumerate(["cat a.txt", "python3 -m pytest -q -p no:cacheprovider test_smoke.py", "ls -la",
                             "grep -rn beta ."]):
        out.append(Trajectory(f"same-command-{i}", "pathological", replies_on_hello([exec_(cmd)] * 16), 16,
                              "WATCHDOG", WATCHDOG_DEATH))
    for i, cmd in enumerate(["yes flood | head -c 2000000", "python3 -c \"print('x' * 3000000)\""]):
        out.append(Trajectory(f"runaway-{i}", "pathological", replies_on_hello([exec_(cmd)] * 12), 12,
                              "LOG_FLOOD", STREAK_DEATH))
    for i in range(2):
        edits = [frame({"name": "SYS_EDIT", "path": "a.txt", "search": f"absent-{i}-{t}", "replace": "x"})
                 for t in range(24)]
        out.append(Trajectory(f"idle-{i}", "pathological", replies_on_hello(edits), 24, "THRASHING", IDLE_DEATH))
    return out


def trajectories() -> list[Trajectory]:
    return _healthy() + _pathological()
