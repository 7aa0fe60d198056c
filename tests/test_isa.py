"""The parser: every violation class, both verdicts, and a fuzz test that it never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bloodwork.isa import Frame, Violation, json_schema, parse

GOOD = {"thought": "look", "q_next": "reading", "op": {"name": "SYS_READ", "path": "a.py"}}


def test_valid_frame_is_strict_and_lenient():
    result = parse(json.dumps(GOOD) + "\n")
    assert result.strict_ok and result.lenient_ok and result.frame is not None
    assert result.frame.op.name == "SYS_READ"


@pytest.mark.parametrize(("text", "violation", "lenient_ok"), [
    ("", Violation.EMPTY, False),
    ("   \n", Violation.EMPTY, False),
    ("I will read the file now.", Violation.NOT_JSON, False),
    ("Sure! " + json.dumps(GOOD), Violation.PROSE_AROUND, True),
    ("```json\n" + json.dumps(GOOD) + "\n```", Violation.PROSE_AROUND, True),
    (json.dumps(GOOD) + json.dumps(GOOD), Violation.MULTIPLE_OBJECTS, False),
    (json.dumps({**GOOD, "op": {"name": "SYS_DELETE", "path": "a"}}), Violation.UNKNOWN_OP, False),
    (json.dumps({"thought": "x", "op": GOOD["op"]}), Violation.MISSING_FIELD, False),
    (json.dumps({**GOOD, "op": {"name": "SYS_READ"}}), Violation.MISSING_FIELD, False),
    (json.dumps({**GOOD, "op": {"path": "a"}}), Violation.MISSING_FIELD, False),
    (json.dumps({**GOOD, "extra": 1}), Violation.EXTRA_FIELD, False),
    (json.dumps({**GOOD, "op": {**GOOD["op"], "mode": "r"}}), Violation.EXTRA_FIELD, False),
    (json.dumps({**GOOD, "op": {"name": "SYS_READ", "path": 3}}), Violation.WRONG_TYPE, False),
    (json.dumps([GOOD]), Violation.WRONG_TYPE, True),
    (json.dumps({**GOOD, "q_next": "q" * 5000}), Violation.TOO_LONG, False),
])
def test_violation_classes(text, violation, lenient_ok):
    result = parse(text)
    assert not result.strict_ok
    assert result.violation == violation
    assert result.lenient_ok is lenient_ok
    assert (result.frame is not None) is lenient_ok


def test_accepted_depends_on_mode():
    result = parse("Here you go: " + json.dumps(GOOD))
    assert result.accepted("strict") is None
    assert result.accepted("lenient") is not None


def test_schema_is_generated_from_the_models():
    schema = json_schema()
    ops = json.dumps(schema)
    for name in ("SYS_READ", "SYS_WRITE", "SYS_EDIT", "SYS_EXEC", "SYS_HALT"):
        assert name in ops
    assert schema["additionalProperties"] is False


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text):
    result = parse(text)
    assert result.strict_ok or result.violation is not None


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_never_raises(value):
    result = parse(json.dumps(value))
    assert result.strict_ok or result.violation is not None


ops = st.one_of(
    st.builds(lambda p, g: {"name": "SYS_READ", "path": p, "page": g}, st.text(min_size=1, max_size=50),
              st.integers(0, 100)),
    st.builds(lambda p, c: {"name": "SYS_WRITE", "path": p, "content": c}, st.text(min_size=1, max_size=50),
              st.text(max_size=300)),
    st.builds(lambda p, s, r: {"name": "SYS_EDIT", "path": p, "search": s, "replace": r},
              st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50), st.text(max_size=50)),
    st.builds(lambda c: {"name": "SYS_EXEC", "cmd": c}, st.text(min_size=1, max_size=100)),
    st.builds(lambda r: {"name": "SYS_HALT", "reason": r}, st.text(max_size=100)),
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200), ops)
def test_valid_frames_round_trip(thought, q, op):
    raw = json.dumps({"thought": thought, "q_next": q, "op": op})
    result = parse(raw)
    assert result.strict_ok, result
    again = parse(result.frame.model_dump_json(exclude_none=True))
    assert again.strict_ok and again.frame == result.frame
    assert Frame.model_validate_json(raw) == result.frame
