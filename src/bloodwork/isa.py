"""The instruction set: one JSON frame per tick, its schema, and a parser that never raises.

The schema is generated from these pydantic models, so the prompt, the exported JSON Schema and the
parser cannot drift apart. Raw text is always scored twice: *strict* (the text is exactly one valid
object, whitespace aside) and *lenient* (one valid object can be extracted, e.g. from a code fence).
Scoring the raw text first is the point: the prior system reported violation rates after a clean-up.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# The prompt's text lives with every other model-facing text; it is re-exported for existing importers.
from bloodwork.prompts import ISA_PROMPT as ISA_PROMPT

MAX_THOUGHT = 2000
MAX_REGISTER = 2000
MAX_PATH = 512
MAX_CONTENT = 200_000
MAX_CMD = 4000
MAX_RAW = 300_000


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SysRead(_Op):
    """Move the pointer to a file (or a page of spilled output)."""

    name: Literal["SYS_READ"]
    path: str = Field(min_length=1, max_length=MAX_PATH)
    page: int = Field(default=0, ge=0, le=100_000)


class SysWrite(_Op):
    """Write a whole file."""

    name: Literal["SYS_WRITE"]
    path: str = Field(min_length=1, max_length=MAX_PATH)
    content: str = Field(max_length=MAX_CONTENT)


class SysEdit(_Op):
    """Replace exactly one occurrence of `search` with `replace`."""

    name: Literal["SYS_EDIT"]
    path: str = Field(min_length=1, max_length=MAX_PATH)
    search: str = Field(min_length=1, max_length=MAX_CONTENT)
    replace: str = Field(max_length=MAX_CONTENT)


class SysExec(_Op):
    """Run a shell command in the sandbox; its result becomes the next slice."""

    name: Literal["SYS_EXEC"]
    cmd: str = Field(min_length=1, max_length=MAX_CMD)
    timeout_s: float | None = Field(default=None, gt=0, le=600)


class SysHalt(_Op):
    """Claim the task done; the task's verifier decides."""

    name: Literal["SYS_HALT"]
    reason: str = Field(max_length=MAX_THOUGHT)


Op = Annotated[SysRead | SysWrite | SysEdit | SysExec | SysHalt, Field(discriminator="name")]
OP_NAMES = ("SYS_READ", "SYS_WRITE", "SYS_EDIT", "SYS_EXEC", "SYS_HALT")
WORLD_OPS = frozenset({"SYS_WRITE", "SYS_EDIT", "SYS_EXEC"})


class Frame(BaseModel):
    """A syscall frame: the model's whole answer for one tick."""

    model_config = ConfigDict(extra="forbid", strict=True)

    thought: str = Field(max_length=MAX_THOUGHT)
    q_next: str = Field(max_length=MAX_REGISTER)
    op: Op

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))


class Violation(StrEnum):
    NOT_JSON = "not_json"
    PROSE_AROUND = "prose_around"
    MULTIPLE_OBJECTS = "multiple_objects"
    UNKNOWN_OP = "unknown_op"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    WRONG_TYPE = "wrong_type"
    TOO_LONG = "too_long"
    EMPTY = "empty"


class ParseResult(BaseModel):
    """Both verdicts on one raw output. `frame` is the strict frame, else the lenient one, else None."""

    strict_ok: bool
    lenient_ok: bool
    frame: Frame | None = None
    violation: Violation | None = None
    lenient_violation: Violation | None = None
    detail: str = ""

    def accepted(self, mode: Literal["strict", "lenient"]) -> Frame | None:
        ok = self.strict_ok if mode == "strict" else self.lenient_ok
        return self.frame if ok else None


_frame_adapter = TypeAdapter(Frame)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_decoder = json.JSONDecoder()
_OBJECT_START = re.compile(r'\{\s*["}]')  # \s is wider than JSON's whitespace: it only lets more through
_FIRST_WINDOW = 64
_LOOKAHEAD = 16


def json_schema() -> dict[str, Any]:
    """The ISA as a JSON Schema document (what `bloodwork isa schema` prints)."""
    schema = _frame_adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bloodwork syscall frame"
    return schema


def _classify(err: ValidationError) -> tuple[Violation, str]:
    errors = err.errors()
    first = errors[0]
    kinds = {e["type"] for e in errors}
    loc = ".".join(str(p) for p in first["loc"])
    if "union_tag_invalid" in kinds or "union_tag_not_found" in kinds:
        bad = next(e for e in errors if e["type"].startswith("union_tag"))
        if bad["type"] == "union_tag_not_found":
            return Violation.MISSING_FIELD, "op.name is missing"
        return Violation.UNKNOWN_OP, f"unknown op {bad.get('input')!r}"
    if "missing" in kinds:
        miss = next(e for e in errors if e["type"] == "missing")
        return Violation.MISSING_FIELD, "missing " + ".".join(str(p) for p in miss["loc"])
    if "extra_forbidden" in kinds:
        extra = next(e for e in errors if e["type"] == "extra_forbidden")
        return Violation.EXTRA_FIELD, "unexpected " + ".".join(str(p) for p in extra["loc"])
    if kinds & {"string_too_long", "too_long"}:
        return Violation.TOO_LONG, f"{loc} is too long"
    return Violation.WRONG_TYPE, f"{loc}: {first['msg']}"


def _validate(obj: Any) -> tuple[Frame | None, Violation | None, str]:
    if not isinstance(obj, dict):
        return None, Violation.WRONG_TYPE, f"top level is {type(obj).__name__}, not an object"
    try:
        return _frame_adapter.validate_python(obj), None, ""
    except ValidationError as err:
        violation, detail = _classify(err)
        return None, violation, detail


def _objects_in(text: str) -> list[Any]:
    """Every top-level JSON object found in free text, left to right, non-overlapping.

    Linear in the text times the nesting depth of unclosed objects (which the decoder's recursion limit
    bounds), where trying `raw_decode` at every `{` was quadratic: its `JSONDecodeError` counts the lines
    before the error's position, so 300 KB of `{` took 12 s. A `{` that cannot open an object (not
    followed by `"` or `}`) is skipped by a regex; each decode runs on a window copied from its start.
    """
    found: list[Any] = []
    frontier = 0  # how far the last failed attempt read: the next one from inside it likely reads as far
    start = _OBJECT_START.search(text)
    while start is not None:
        i = start.start()
        ok, obj, end = _decode_object_at(text, i, max(_FIRST_WINDOW, frontier - i + 2 * _LOOKAHEAD))
        if not ok:
            frontier = end
            start = _OBJECT_START.search(text, i + 1)
            continue
        found.append(obj)
        start = _OBJECT_START.search(text, end)
    return found


def _decode_object_at(text: str, i: int, size: int) -> tuple[bool, Any, int]:
    """What `raw_decode(text, i)` finds: (True, object, its end) or (False, None, how far it read).

    The window grows (x4) while a failure may be the window's own end: an unterminated string (reported
    at the string's start), or an error within the decoder's lookahead of the end (`-Infinity`, `\\uXXXX`).
    A success inside the window is final: the object closed with its `}`.
    """
    while True:
        window = text[i : i + size]
        try:
            obj, end = _decoder.raw_decode(window)
        except json.JSONDecodeError as err:
            cut_short = err.msg.startswith("Unterminated string") or err.pos >= len(window) - _LOOKAHEAD
            if i + size >= len(text) or not cut_short:
                return False, None, i + (len(window) if cut_short else err.pos)
            size *= 4
            continue
        return True, obj, i + end


def _lenient(text: str) -> tuple[Frame | None, Violation | None, str]:
    fenced = _FENCE.findall(text)
    candidates = _objects_in("\n".join(fenced)) if fenced else []
    if not candidates:
        candidates = _objects_in(text)
    if not candidates:
        return None, Violation.NOT_JSON, "no JSON object found"
    if len(candidates) > 1:
        return None, Violation.MULTIPLE_OBJECTS, f"{len(candidates)} objects"
    return _validate(candidates[0])


def parse(text: str) -> ParseResult:
    """Score one raw model output. Never raises, whatever the text."""
    if not isinstance(text, str) or not text.strip():
        return ParseResult(strict_ok=False, lenient_ok=False, violation=Violation.EMPTY,
                           lenient_violation=Violation.EMPTY, detail="empty output")
    if len(text) > MAX_RAW:
        return ParseResult(strict_ok=False, lenient_ok=False, violation=Violation.TOO_LONG,
                           lenient_violation=Violation.TOO_LONG, detail=f"{len(text)} chars")
    stripped = text.strip()
    strict_frame: Frame | None = None
    try:
        whole = json.loads(stripped)
    except (ValueError, RecursionError):
        whole = _NOT_PARSED
    if whole is not _NOT_PARSED:
        strict_frame, violation, detail = _validate(whole)
    try:
        lenient_frame, lenient_violation, lenient_detail = _lenient(text)
    except RecursionError:
        lenient_frame, lenient_violation, lenient_detail = None, Violation.NOT_JSON, "nesting too deep"
    if whole is _NOT_PARSED:
        if lenient_violation in (Violation.NOT_JSON, Violation.MULTIPLE_OBJECTS):
            violation, detail = lenient_violation, lenient_detail
        else:
            violation, detail = Violation.PROSE_AROUND, "text around the JSON object"
    if strict_frame is not None:
        return ParseResult(strict_ok=True, lenient_ok=True, frame=strict_frame)
    return ParseResult(
        strict_ok=False,
        lenient_ok=lenient_frame is not None,
        frame=lenient_frame,
        violation=violation,
        lenient_violation=lenient_violation,
        detail=detail,
    )


_NOT_PARSED = object()
