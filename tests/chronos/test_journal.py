"""The hash chain: verification finds the first tampered line; a torn tail is tolerated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bloodwork.chronos.journal import GENESIS, Journal, escape_surrogates, line_hash, read_events, verify
from bloodwork.chronos.records import ChaosData, CrashData, HaltData, ResumeData, StopData
from tests.conftest import forge_chain


def write_journal(path: Path, n: int = 10) -> None:
    journal = Journal(path)
    for i in range(n):
        journal.stage(i, CrashData(error=f"event {i} ünïcode", report=str(i)))
        if i % 3 == 0:
            journal.flush()
    journal.close()


def test_clean_journal_verifies(tmp_path):
    path = tmp_path / ".journal.log"
    write_journal(path)
    report = verify(path)
    assert report.ok and report.events == 10 and not report.torn_tail
    assert [e.seq for e in read_events(path)] == list(range(10))


@pytest.mark.parametrize("line_index", [0, 4, 9])
def test_one_flipped_byte_fails_at_that_line(tmp_path, line_index):
    path = tmp_path / ".journal.log"
    write_journal(path)
    lines = path.read_bytes().split(b"\n")
    target = bytearray(lines[line_index])
    pos = target.index(b'"report":"') + 10  # the payload digit
    target[pos] = ord("7") if target[pos] != ord("7") else ord("8")
    lines[line_index] = bytes(target)
    path.write_bytes(b"\n".join(lines))
    report = verify(path)
    assert not report.ok
    assert report.first_bad_seq == line_index and report.first_bad_line == line_index + 1


def test_deleted_line_breaks_the_chain(tmp_path):
    path = tmp_path / ".journal.log"
    write_journal(path)
    lines = path.read_bytes().split(b"\n")
    del lines[3]
    path.write_bytes(b"\n".join(lines))
    report = verify(path)
    assert not report.ok and report.first_bad_seq == 3


def test_torn_last_line_is_reported_not_fatal(tmp_path):
    path = tmp_path / ".journal.log"
    write_journal(path)
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 10, "ts": 1.0, "tick"')
    report = verify(path)
    assert report.ok and report.torn_tail and report.events == 10
    assert len(read_events(path)) == 10


def test_resumed_writer_continues_the_chain(tmp_path):
    path = tmp_path / ".journal.log"
    write_journal(path, 4)
    report = verify(path)
    journal = Journal(path, seq=report.events, prev=report.last_hash)
    journal.stage(4, ResumeData(at_tick=4, discarded_uncommitted={}, resumes=1))
    journal.close()
    assert verify(path).ok and verify(path).events == 5


def test_discard_drops_staged_lines_and_keeps_the_chain(tmp_path):
    path = tmp_path / ".journal.log"
    journal = Journal(path)
    journal.stage(0, StopData(status="interrupted", reason=None))
    journal.flush()
    journal.stage(1, StopData(status="interrupted", reason="uncommitted"))
    journal.discard()
    journal.stage(1, CrashData(error="boom", report="crash.txt"))
    journal.close()
    report = verify(path)
    assert report.ok and [e.kind for e in read_events(path)] == ["stop", "crash"]


def test_every_single_byte_flip_is_detected(tmp_path):
    path = tmp_path / ".journal.log"
    write_journal(path, 3)
    original = path.read_bytes()
    line_starts = [0] + [i + 1 for i, b in enumerate(original) if b == ord("\n")]
    for pos in range(len(original) - 1):  # the final newline: flipping it only tears the tail
        flipped = bytearray(original)
        flipped[pos] ^= 0x01
        path.write_bytes(bytes(flipped))
        report = verify(path)
        line = max(i for i, start in enumerate(line_starts) if start <= pos)
        assert not report.ok, f"flip at byte {pos} went unnoticed"
        assert report.first_bad_seq <= line


# -- the committed head: what a chain alone cannot prove ----------------------------------------------------------

def _rewrite(path: Path, events: list[dict]) -> None:
    """What an attacker with write access does: write events with every hash recomputed (a valid chain)."""
    path.unlink()
    forge_chain(path, events)


def _cut_last(path: Path, events: list[dict]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:-1]))


def _truncate_half(path: Path, events: list[dict]) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in lines[: len(lines) // 2]))


def _append_forged(path: Path, events: list[dict]) -> None:
    report = verify(path)
    journal = Journal(path, seq=report.events, prev=report.last_hash)
    journal.stage(99, HaltData(reason="forged", verifier={"passed": True}))
    journal.close()


def _rewrite_middle(path: Path, events: list[dict]) -> None:
    events[len(events) // 2]["data"] = {"error": "rewritten", "report": "-1"}
    _rewrite(path, events)


def _fabricate(path: Path, events: list[dict]) -> None:
    _rewrite(path, [{"tick": i, "kind": "tick", "data": {"i": i, "text": "made up"}} for i in range(len(events))])


@pytest.mark.parametrize("tamper", [_cut_last, _truncate_half, _append_forged, _rewrite_middle, _fabricate])
def test_a_chain_that_does_not_end_at_its_committed_head_fails(tmp_path, tamper):
    path = tmp_path / ".journal.log"
    journal = Journal(path)
    for i in range(10):
        journal.stage(i, CrashData(error=f"event {i}", report=str(i)))
    journal.flush()
    head = journal.head()
    journal.close()
    assert head.seq == 9 and verify(path, head).ok
    tamper(path, [e.model_dump() for e in read_events(path)])
    assert verify(path).ok, "the tampered chain is self-consistent: the chain alone proves nothing here"
    report = verify(path, head)
    assert not report.ok and report.reason
    assert report.trusted <= head.seq + 1 and report.first_bad_seq is not None


def test_trusted_events_stop_at_the_head_when_events_follow_it(tmp_path):
    path = tmp_path / ".journal.log"
    journal = Journal(path)
    journal.stage(0, StopData(status="interrupted", reason=None))
    journal.flush()
    head = journal.head()
    # fsynced but never committed (the registers were not replaced)
    journal.stage(1, StopData(status="interrupted", reason=None))
    journal.close()
    report = verify(path, head)
    assert not report.ok and report.trusted == 1 and report.first_bad_seq == 1
    assert "after the committed head" in report.reason


def test_the_head_before_any_event_is_genesis(tmp_path):
    path = tmp_path / ".journal.log"
    journal = Journal(path)
    head = journal.head()
    journal.close()
    assert (head.seq, head.hash) == (-1, GENESIS) and verify(path, head).ok


# -- raw model text that UTF-8 cannot hold ---------------------------------------------------------------------

def test_hash_formula_is_unchanged_for_text_utf8_can_hold():
    body = {"seq": 0, "ts": 1.5, "tick": 0, "kind": "tick", "data": {"t": "ünïcode ✓ 😀", "n": [1, 2]},
            "prev": GENESIS}
    expected = hashlib.sha256((GENESIS + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                    ensure_ascii=False)).encode("utf-8")).hexdigest()
    assert line_hash(GENESIS, body) == expected


def test_lone_surrogates_are_journaled_losslessly(tmp_path):
    path = tmp_path / ".journal.log"
    texts = ["\ud800", "a\udcffb", "\ude00\ud83d", "pair \ud83d\ude00 joins", "\\ud800 is six ASCII characters"]
    journal = Journal(path)
    for text in texts:
        journal.stage(0, ChaosData(kind=text, tick=0, target="oracle", params={text: "as a key too"}, injected=True))
    journal.close()
    raw = path.read_bytes()
    raw.decode("utf-8")  # valid UTF-8, whatever the model sent
    report = verify(path)
    assert report.ok and report.events == len(texts)
    answers = [e.data.kind for e in read_events(path) if e.kind == "chaos"]
    assert answers[:3] == texts[:3] and answers[4] == texts[4]
    assert answers[3] == "pair 😀 joins"  # JSON reads an escaped pair as the character it encodes
    assert escape_surrogates("\ud800x") == "\\ud800x" and escape_surrogates("plain ✓") == "plain ✓"
