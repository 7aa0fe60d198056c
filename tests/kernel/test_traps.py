"""Every trap kind, triggered by a scripted run, lands in the journal with its kind and tick."""

from __future__ import annotations

import pytest

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.journal import verify
from bloodwork.chronos.run import RunStatus
from bloodwork.prompts import split_tail
from tests.conftest import events, frame

READ_A = frame({"name": "SYS_READ", "path": "a.txt"})
READ_B = frame({"name": "SYS_READ", "path": "b.txt"})
WRITE_HELLO = frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"})
HALT = frame({"name": "SYS_HALT", "reason": "done"})


def trap_ticks(paths, kind):
    return [e.tick for e in events(paths, "trap") if e.data.kind == kind]


@pytest.mark.parametrize(("kind", "replies", "tick"), [
    ("SCHEMA_VIOLATION", [READ_A, "I think I should read the file."], 1),
    ("PAGE_FAULT", [READ_A, frame({"name": "SYS_READ", "path": "missing.txt"})], 1),
    ("PATH_ESCAPE", [frame({"name": "SYS_READ", "path": "../run.json"})], 0),
    ("IO_FAULT", [READ_A, READ_B, frame({"name": "SYS_WRITE", "path": "sub", "content": "x"})], 2),
    ("EXEC_TIMEOUT", [frame({"name": "SYS_EXEC", "cmd": "sleep 30", "timeout_s": 0.5})], 0),
    ("LOG_FLOOD", [frame({"name": "SYS_EXEC", "cmd": "yes flood | head -c 2000000"})], 0),
    ("WATCHDOG", [READ_A] * 5, 4),
    ("THRASHING", [READ_A, READ_B, READ_A, READ_B], 3),
    ("ILLEGAL_HALT", [READ_A, HALT], 1),
    ("ORACLE_FAULT", [READ_A, READ_B], 2),
])
def test_each_trap_kind_is_journaled_at_its_tick(runner, kind, replies, tick):
    result, paths = runner.run(replies, max_ticks=len(replies) + (1 if kind == "ORACLE_FAULT" else 0))
    assert tick in trap_ticks(paths, kind), [(e.tick, e.data.kind) for e in events(paths, "trap")]
    trace = read_jsonl(paths.trace)
    assert kind in trace[tick]["traps"]
    assert verify(paths.journal).ok


def test_idle_thrashing_after_six_ticks_without_progress(runner):
    misses = [frame({"name": "SYS_EDIT", "path": "a.txt", "search": f"nothing-{i}", "replace": "x"}) for i in range(7)]
    _, paths = runner.run(misses)
    # tick 0 shows a new slice (progress); ticks 1..6 repeat it: the 6th idle tick is tick 6.
    assert trap_ticks(paths, "THRASHING") == [6]


def test_watchdog_blocks_a_repeat_on_an_unchanged_workspace(runner):
    _, paths = runner.run([frame({"name": "SYS_EXEC", "cmd": "cat a.txt"})] * 5)
    assert trap_ticks(paths, "WATCHDOG") == [4]
    fifth = read_jsonl(paths.trace)[4]
    assert fifth["blocked"] and "exit" not in fifth["result"]  # the fifth identical command never ran
    assert not (paths.spill / "exec-4.out").exists()


def test_the_same_command_that_changes_the_workspace_is_progress(runner):
    """`echo x >> log.txt` repeated: each run acts on a new world state, so none is a repeat."""
    _, paths = runner.run([frame({"name": "SYS_EXEC", "cmd": "echo x >> log.txt"})] * 8)
    assert (paths.workspace / "log.txt").read_text().count("x") == 8
    assert events(paths, "trap") == []
    worlds = [r["world"] for r in read_jsonl(paths.trace)]
    assert all(before != after for before, after in worlds)
    assert all(worlds[i][1] == worlds[i + 1][0] for i in range(len(worlds) - 1))


def test_rerunning_tests_after_each_edit_is_progress_even_with_the_same_output(runner):
    """Edit, run, edit, run: the edits touch only a comment, so the test output never changes; the world does."""
    replies = []
    for i in range(8):
        replies.append(frame({"name": "SYS_WRITE", "path": "notes.py", "content": f"# revision {i}\n"}))
        replies.append(frame({"name": "SYS_EXEC", "cmd": "python3 -m pytest -q -p no:cacheprovider ."}))
    _, paths = runner.run(replies)
    assert events(paths, "trap") == []
    seen = {r["seen"] for r in read_jsonl(paths.trace)[1::2]}
    assert len(seen) == 1  # identical observations (pytest's timing masked) on eight different world states


def test_long_output_is_paged_not_trapped_and_every_page_reads_back(runner):
    cmd = "python3 -c \"import sys; [print(f'line {i:05d} ' + 'x' * 60) for i in range(300)]\""
    replies = [frame({"name": "SYS_EXEC", "cmd": cmd})] + [
        frame({"name": "SYS_READ", "path": "spill://exec-0.out", "page": p}) for p in range(9)]
    _, paths = runner.run(replies)
    traps = [(e.tick, e.data.kind) for e in events(paths, "trap")]
    assert traps == [(9, "PAGE_FAULT")]  # 21,600 chars are pages 0-7: only the read of page 8 is a fault
    first = read_jsonl(paths.trace)[0]
    shown = messages_at(paths.context, 1)[-1]["content"]
    assert first["result"]["spill"] == "exec-0.out" and "TRAP" not in shown
    assert "line 00000" in shown and "line 00299" in shown and "line 00150" not in shown
    assert f"sha256 {first['result']['sha256'][:16]}" in shown and "21600 bytes" in shown
    assert '{"name": "SYS_READ", "path": "spill://exec-0.out", "page": 0}' in shown
    # the read at tick t is shown at tick t + 1: ticks 2-9 show pages 0-7, each after its header line
    pages = [split_tail(messages_at(paths.context, t)[-1]["content"])[2].split("\n", 1)[1] for t in range(2, 10)]
    assert "".join(pages) == (paths.spill / "exec-0.out").read_text()


def test_an_injected_flood_is_a_trap_below_the_ceiling(runner):
    replies = [frame({"name": "SYS_EXEC", "cmd": "echo hello"})]
    _, paths = runner.run(replies, chaos={"log_flood": 1.0})
    traps = events(paths, "trap")
    assert [(t.data.kind, t.data.injected) for t in traps] == [("LOG_FLOOD", True)]
    assert read_jsonl(paths.trace)[0]["result"]["bytes"] < 1_048_576


def test_panic_budget_spent_means_death(runner):
    _, paths = runner.run(["garbage"] * 30, panic_budget=3)
    manifest = (paths.manifest).read_text()
    assert '"status": "died"' in manifest and '"cause_of_death": "SCHEMA_VIOLATION"' in manifest
    panics = events(paths, "panic")
    assert [p.tick for p in panics] == [2, 5, 8]
    assert [p.data.budget_left for p in panics] == [2, 1, 0]
    deaths = events(paths, "death")
    assert len(deaths) == 1 and deaths[0].tick == 8 and deaths[0].data.cause == "SCHEMA_VIOLATION"
    assert len(read_jsonl(paths.trace)) == 9  # nothing ran after death
    assert verify(paths.journal).ok


def test_recovery_records_mttr_from_first_trap(runner):
    replies = [READ_A, frame({"name": "SYS_READ", "path": "nope"}), "prose", WRITE_HELLO, HALT]
    result, paths = runner.run(replies)
    assert result.status == RunStatus.COMPLETED
    rec = events(paths, "recovery")
    assert len(rec) == 1
    assert rec[0].tick == 3 and rec[0].data.streak_start_tick == 1 and rec[0].data.mttr_ticks == 2
    assert rec[0].data.traps == ["PAGE_FAULT", "SCHEMA_VIOLATION"]


def test_panic_clears_history_and_repins_goal(runner):
    replies = ["x", "y", "z", READ_A]
    _, paths = runner.run(replies, panic_budget=3)
    ctx = read_jsonl(paths.context_ticks)
    assert ctx[2]["tokens"]["history"] > 0
    assert ctx[3]["tokens"]["history"] == 0 and ctx[3]["tokens"]["goal"] > 0
    last = read_jsonl(paths.trace)[3]
    assert last["d"] == "sys://panic"


def test_injected_faults_are_told_apart(runner):
    replies = [frame({"name": "SYS_WRITE", "path": f"f{i}.txt", "content": "data" * 10}) for i in range(3)]
    _, paths = runner.run(replies, chaos={"write_deny": 1.0}, panic_budget=5)
    chaos = events(paths, "chaos")
    traps = events(paths, "trap")
    assert [c.data.kind for c in chaos] == ["write_deny"] * 3
    assert all(t.data.kind == "IO_FAULT" and t.data.injected for t in traps)
    # the partial write really happened: half of the bytes, then EACCES
    assert (paths.workspace / "f0.txt").read_text() == ("data" * 10)[:20]
    _, natural = runner.run([READ_A, frame({"name": "SYS_WRITE", "path": "sub", "content": "x"})], run_id="n")
    assert [t.data.injected for t in events(natural, "trap")] == [False]


def test_register_is_bounded(runner):
    long_q = frame({"name": "SYS_READ", "path": "a.txt"}, q="n" * 1900)
    _, paths = runner.run([long_q, READ_B], context={"register_max_chars": 100})
    trace = read_jsonl(paths.trace)
    assert len(trace[0]["q_next"]) == 100
    assert any(e.data.section == "register" for e in events(paths, "evict"))


def test_window_policy_repins_the_goal_after_a_panic(runner):
    reads = [frame({"name": "SYS_READ", "path": p}) for p in ("a.txt", "b.txt", "sub/c.txt")]
    replies = reads + ["x", "y", "z"] + reads
    _, paths = runner.run(replies, context={"policy": "window", "window": 3}, panic_budget=5)
    goal = [r["tokens"]["goal"] > 0 for r in read_jsonl(paths.context_ticks)]
    # pinned at 0, gone from tick 3; the panic at tick 5 re-pins it for ticks 6-8
    assert goal == [True, True, True, False, False, False, True, True, True]
