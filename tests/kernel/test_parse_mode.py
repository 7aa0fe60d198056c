"""`parse_mode`: the kernel acts on strict frames only, unless a run is configured to act on lenient ones too.

Either way the raw text and both verdicts are recorded, so the violation rates never depend on the mode.
"""

from __future__ import annotations

from tests.conftest import events, frame

FENCED = "```json\n" + frame({"name": "SYS_WRITE", "path": "hello.txt", "content": "hello\n"}) + "\n```"


def test_a_fenced_frame_traps_by_default(runner):
    result, paths = runner.run([FENCED], run_id="strict", sandbox="none")
    assert [t.data.kind for t in events(paths, "trap")] == ["SCHEMA_VIOLATION"]
    assert not (paths.workspace / "hello.txt").exists()
    tick = events(paths, "tick")[0].data
    assert (tick.strict_ok, tick.lenient_ok, tick.op) == (False, True, None)


def test_lenient_mode_acts_on_the_extracted_frame_and_still_records_the_strict_verdict(runner):
    result, paths = runner.run([FENCED], run_id="lenient", sandbox="none", parse_mode="lenient")
    assert events(paths, "trap") == []
    assert (paths.workspace / "hello.txt").read_text() == "hello\n"
    tick = events(paths, "tick")[0].data
    assert (tick.strict_ok, tick.lenient_ok, tick.op, tick.violation) == (False, True, "SYS_WRITE", "prose_around")
