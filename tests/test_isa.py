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


def _objects_reference(text: str) -> list:
    """The plain algorithm the parser's search must agree with: try `raw_decode` at every `{`."""
    decoder, found, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        found.append(obj)
        i = text.find("{", end)
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(['{', '}', '"', ':', ',', '[', ']', ' ', '\n', 'a', '1', '-', 'tru', '\\', '{"a":',
                                 '"x"', json.dumps(GOOD), '{"k": "' + "v" * 70 + '"}', "-Infinity", "\\u12"]),
                max_size=60))
def test_object_search_finds_what_the_plain_decoder_finds(parts):
    from bloodwork.isa import _objects_in

    text = "".join(parts)
    try:
        expected = _objects_reference(text)
    except RecursionError:
        return
    assert _objects_in(text) == expected


class CountingDecoder(json.JSONDecoder):
    """Counts what each decode attempt is handed: the parser's work on a text, whatever the machine's speed."""

    chars = 0
    calls = 0

    def raw_decode(self, s, idx=0):
        CountingDecoder.chars += len(s) - idx
        CountingDecoder.calls += 1
        return super().raw_decode(s, idx)


@pytest.mark.parametrize("text", [
    "{" * 299_000,                                  # was 12 s: each failure counted the lines before it
    '{"a":1,' * 40_000,                             # an object start every 7 characters, none closing
    '{"a":' * 900 + "x" * 290_000,                  # deep and unclosed, then garbage
    'prose {"thought": "' + "y" * 290_000,          # one string that never ends
])
def test_hostile_text_costs_linear_decode_work(monkeypatch, text):
    import time

    from bloodwork import isa

    monkeypatch.setattr(isa, "_decoder", CountingDecoder())
    CountingDecoder.chars = CountingDecoder.calls = 0
    started = time.perf_counter()
    result = parse(text)
    elapsed = time.perf_counter() - started
    assert not result.lenient_ok
    assert CountingDecoder.chars <= 12 * len(text), (CountingDecoder.calls, CountingDecoder.chars)
    assert elapsed < 10, elapsed  # loose: a shared, loaded machine; the quadratic parser took 12 s on the first


def test_a_frame_after_hostile_text_is_still_found():
    result = parse("{" * 50_000 + " " + json.dumps(GOOD))
    assert result.lenient_ok and result.frame is not None and result.violation == Violation.PROSE_AROUND
