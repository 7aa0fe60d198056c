"""The hash chain: verification finds the first tampered line; a torn tail is tolerated."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodwork.chronos.journal import Journal, read_events, verify


def write_journal(path: Path, n: int = 10) -> None:
    journal = Journal(path)
    for i in range(n):
        journal.stage(i, "tick", {"i": i, "text": f"event {i} ünïcode"})
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
    pos = target.index(b'"i":') + 4  # the payload digit
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
    journal.stage(4, "resume", {})
    journal.close()
    assert verify(path).ok and verify(path).events == 5


def test_discard_drops_staged_lines_and_keeps_the_chain(tmp_path):
    path = tmp_path / ".journal.log"
    journal = Journal(path)
    journal.stage(0, "tick", {})
    journal.flush()
    journal.stage(1, "tick", {"uncommitted": True})
    journal.discard()
    journal.stage(1, "crash", {})
    journal.close()
    report = verify(path)
    assert report.ok and [e.kind for e in read_events(path)] == ["tick", "crash"]


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
