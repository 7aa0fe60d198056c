"""`bloodwork fork`: candidates at one exact context, branches from a replayed rebuild, labels, pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.records import Event, parse_event
from bloodwork.data.build import BuildOptions, build_dataset
from bloodwork.data.fork import (
    Candidate,
    ForkError,
    ForkRecord,
    fork_run,
    label_branch,
    make_pairs,
    mask_volatile,
)
from bloodwork.data.formats import prompt_sha256
from bloodwork.data.mix import parse_mix
from tests.conftest import Runner

# Scripted, not a model. As the run's policy: notes, one per tick. At the fork tick (purpose "fork"),
# even candidates write a new file (progress) and odd ones answer prose (a schema violation).
POLICY = '''
import json

def frame(op):
    return json.dumps({"thought": "t", "q_next": "q", "op": op})

def policy(call, messages):
    if call.purpose == "fork":
        if call.call_index % 2:
            return "I think I should write the file now."
        return frame({"name": "SYS_WRITE", "path": "fork%d.txt" % call.call_index, "content": "k"})
    return frame({"name": "SYS_WRITE", "path": "note%d.txt" % call.tick, "content": "n"})
'''
FORK_TICK = 3


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ForkRecord]:
    root = tmp_path_factory.mktemp("fork")
    script = root / "policy.py"
    script.write_text(POLICY)
    _, paths = Runner(root).run(str(script), run_id="src", max_ticks=6)
    record = fork_run(paths.root, FORK_TICK, 4, out=root / "f", horizon=2)
    return paths.root, record


def test_candidates_are_branched_from_the_exact_context_and_labelled(forked):
    src, record = forked
    prompt = messages_at(src / "context", FORK_TICK)
    assert record.prompt == prompt and record.prompt_sha256 == prompt_sha256(prompt)
    assert record.replay_events_checked > 0  # the rebuild was compared with the original, tick by tick
    assert [c.label for c in record.candidates] == ["progressed", "trapped"] * 2
    for c in record.candidates:
        assert c.context_identical and c.context_equivalent
        assert prompt_sha256(messages_at(Path(c.branch_dir) / "context", FORK_TICK)) == record.prompt_sha256
    assert {(p.chosen, p.rejected) for p in record.pairs} == {(0, 1), (0, 3), (2, 1), (2, 3)}
    assert not record.refused
    assert json.loads((Path(record.base_dir).parent.parent / "fork.json").read_text())["fork_id"] == record.fork_id


def test_dpo_pairs_from_forks_share_one_identical_prompt(forked, tmp_path: Path):
    src, record = forked
    stats = build_dataset([src.parent, Path(record.base_dir).parent.parent], tmp_path / "d",
                          BuildOptions(mix=parse_mix("1/1/1"), include_scripted=True, test_fraction=0,
                                       exact_lengths=False), generator="test")
    assert stats.runs_used == 1 and stats.runs_excluded.get("fork artifacts (rebuilt or branched runs)", 0) >= 5
    rows = [json.loads(line) for line in (tmp_path / "d" / "train" / "dpo.jsonl").read_text().splitlines()]
    fork_rows = [r for r in rows if r["meta"]["source"] == "fork"]
    assert len(fork_rows) == stats.dpo.fork_pairs == 4
    for r in fork_rows:
        assert r["prompt"] == messages_at(src / "context", FORK_TICK)
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert (r["meta"]["chosen_label"], r["meta"]["rejected_label"]) == ("progressed", "trapped")


def cand(i: int, label: str, polarity: str, fp: str | None, text: str, **kw: object) -> Candidate:
    fields = {"context_identical": True, "context_equivalent": True, **kw}
    return Candidate(index=i, text=text, latency_ms=1, strict_ok=True, lenient_ok=True, violation=None, op="SYS_EXEC",
                     fingerprint=fp, label=label, polarity=polarity, **fields)


def test_contradictory_pairs_are_refused():
    # The same op progressed in one branch and trapped in another: it says nothing about the op.
    cands = [cand(0, "progressed", "positive", "fpA", "a"), cand(1, "trapped", "negative", "fpA", "a2"),
             cand(2, "progressed", "positive", "fpB", "b"), cand(3, "trapped", "negative", "fpC", "c"),
             cand(4, "progressed", "positive", "fpD", "d", contradictory=True,
                  evidence=["tick 5: panic THRASHING"]),
             cand(5, "trapped", "negative", "fpE", "e", context_identical=False, context_equivalent=False),
             cand(6, "trapped", "negative", "fpF", "f", context_identical=False)]
    pairs, refused = make_pairs(cands)
    assert {(p.chosen, p.rejected) for p in pairs} == {(2, 3), (2, 6)}  # 6 differs in timings only
    reasons = {(tuple(r.candidates), r.reason_class) for r in refused}
    assert ((0,), "contradictory label") in reasons and ((1,), "contradictory label") in reasons
    assert ((4,), "contradictory label") in reasons and ((5,), "context differs") in reasons
    same = [cand(0, "progressed", "positive", None, "x"), cand(1, "trapped", "negative", None, "x")]
    pairs, refused = make_pairs(same)
    assert not pairs and refused[0].reason_class == "identical texts"


def test_only_timings_and_output_digests_are_masked():
    def msgs(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    a = msgs("$ pytest\n[exit 1, 1.00s, 4613 bytes]\n5 failed in 0.13s\n[4613 bytes, sha256 350785e931930deb]")
    b = msgs("$ pytest\n[exit 1, 0.41s, 4613 bytes]\n5 failed in 0.06s\n[4613 bytes, sha256 a4551b8d22425486]")
    assert mask_volatile(a) == mask_volatile(b)
    assert mask_volatile(a) != mask_volatile(msgs("$ pytest\n[exit 1, 1.00s, 4613 bytes]\n3 failed in 0.13s\n"
                                                  "[4613 bytes, sha256 350785e931930deb]"))
    head = "$ pytest\n[exit {}, TIMED OUT after {}s, 4613 bytes of output]\n"
    assert mask_volatile(msgs(head.format(1, 2))) == mask_volatile(msgs(head.format(1, 3)))
    assert mask_volatile(msgs(head.format(1, 2))) != mask_volatile(msgs(head.format(0, 2)))
    assert mask_volatile(msgs("[exit 1, 1.87s, 4613 bytes of output]")) != mask_volatile(
        msgs("[exit 1, 4612 bytes of output]"))


def test_fork_refuses_a_tick_outside_the_run(forked, tmp_path: Path):
    src, _ = forked
    with pytest.raises(ForkError, match="cannot be forked"):
        fork_run(src, 99, 2, out=tmp_path / "x")
    with pytest.raises(ForkError, match="samples"):
        fork_run(src, 1, 1, out=tmp_path / "y")


# A whole record of each kind the labels read; a test names only the fields it is about.
DATA: dict[str, dict[str, object]] = {
    "tick": {"op": "SYS_READ", "fp": None, "call_index": 0, "strict_ok": True, "lenient_ok": True, "violation": None,
             "blocked": False, "progress": True, "changed": False, "d_next": "sys://x", "slice_digest": "",
             "context_tokens": 0, "latency_ms": 0.0, "ask_s": 0.0, "traps": []},
    "trap": {"detail": "", "injected": False, "op": None, "d": "", "slice": ""},
    "panic": {"streak": None, "budget_left": 1, "panic_no": 1},
}


def event(tick: int, event_kind: str, **data: object) -> Event:
    return parse_event({"seq": 0, "ts": 0.0, "tick": tick, "kind": event_kind, "data": {**DATA[event_kind], **data},
                        "prev": "", "hash": ""})


def test_labels_come_from_the_branch_journal():
    def tick(t: int, progress: bool = True) -> Event:
        return event(t, "tick", progress=progress)

    assert label_branch([tick(4)], 4, 2)[0] == "progressed"
    assert label_branch([tick(4, False)], 4, 2)[0] == "idle"
    assert label_branch([event(4, "trap", kind="PAGE_FAULT"), tick(4)], 4, 2)[0] == "trapped"
    assert label_branch([event(4, "trap", kind="WATCHDOG"), tick(4)], 4, 2)[0] == "thrashed"
    assert label_branch([event(4, "trap", kind="LOG_FLOOD"), tick(4)], 4, 2)[0] == "faulted"  # output too long
    assert label_branch([event(4, "trap", kind="PAGE_FAULT", injected=True), tick(4)], 4, 2)[0] == "injected"
    assert label_branch([tick(4, False), event(5, "trap", kind="THRASHING")], 4, 2)[0] == "thrashed"
    label, contradictory, evidence = label_branch([tick(4), event(5, "panic", cause="WATCHDOG")], 4, 2)
    assert (label, contradictory) == ("progressed", True) and "panic" in evidence[0]
    assert label_branch([tick(4), event(6, "panic", cause="WATCHDOG")], 4, 2)[1] is False  # past the horizon


# The run leaves a FIFO (and a symlink) in its workspace at tick 0; every branch is a copy of the rebuilt run.
FIFO_POLICY = '''
import json

def frame(op):
    return json.dumps({"thought": "t", "q_next": "q", "op": op})

def policy(call, messages):
    if call.purpose == "fork":
        return frame({"name": "SYS_WRITE", "path": "fork%d.txt" % call.call_index, "content": "k"})
    if call.tick == 0:
        return frame({"name": "SYS_EXEC", "cmd": "mkfifo pipe && ln -s a.txt link.txt"})
    return frame({"name": "SYS_WRITE", "path": "note%d.txt" % call.tick, "content": "n"})
'''


def test_a_fifo_in_the_workspace_is_left_out_of_each_branch(tmp_path: Path):
    script = tmp_path / "policy.py"
    script.write_text(FIFO_POLICY)
    _, paths = Runner(tmp_path).run(str(script), run_id="src", max_ticks=3)
    assert (paths.workspace / "pipe").is_fifo(), "the run made its FIFO"
    record = fork_run(paths.root, 2, 2, out=tmp_path / "f", horizon=1)
    assert [c.label for c in record.candidates] == ["progressed", "progressed"]
    for c in record.candidates:
        ws = Path(c.branch_dir) / "workspace"
        assert not (ws / "pipe").exists() and not (ws / "pipe").is_symlink()
        assert (ws / "note1.txt").read_text() == "n" and (ws / "sub" / "c.txt").read_text() == "gamma\n"
        assert (ws / "link.txt").is_symlink() and (ws / "link.txt").readlink() == Path("a.txt")
        assert (ws / f"fork{c.index}.txt").read_text() == "k"
        assert any("left out of the branch's copy" in e and "pipe" in e for e in c.evidence), c.evidence
