"""Every text the model reads, in one place: the ISA prompt, the context tail, trap and panic slices,
the start slice, command results and the paging note, the mask line and the goal probe's question.

Why one module: what the model is told is part of every measurement (the matrix keys its rows by the
prompt template's hash), and the evidence code and the scripted experts parse some of it back (`REGISTER q:`,
`SLICE at d=`, `GOAL:`). They import the constants and `split_tail` from here instead of copying literals,
so a wording change cannot silently break a parser. This module is the lowest layer: it imports nothing
from bloodwork.

The ISA prompt shows a worked example from another project with realistic values and no placeholder
phrases: the embedded 135M model, given `{"thought": "short reasoning", ...}`, answered with exactly those
words tick after tick (bench/prompt_ab.py measures the copy rates of the old and the new prompt).
"""

from __future__ import annotations

import json
import re
from typing import Any

# -- the ISA prompt ------------------------------------------------------------------------------------

# The worked example: a frame from a project that is not any built-in task (a URL-slug library), with the
# values an agent there would really write. It is shown in words, never as JSON and never as a field name
# followed by a quoted value: a small model that has seen `{"thought": "` (or `path "`) followed by text
# continues its own `"thought": "` (or `"path": "`) with that text. Given the old placeholders it answered
# "short reasoning" tick after tick; given this example as JSON it answered "test_accents fails: ..." on
# the ledger task; given `path "slugkit/text.py"` it read the path "slug". With no such prefix in its
# context it writes from its goal and slice.
EXAMPLE_FRAME: dict[str, Any] = {
    "thought": "test_accents fails: slugify('Crème brûlée') keeps the accents; normalize() must strip them",
    "q_next": "slugkit: 11 of 12 tests pass. failing: test_accents. next: edit normalize() in slugkit/text.py",
    "op": {"name": "SYS_EDIT", "path": "slugkit/text.py", "search": "    return text.lower()",
           "replace": "    return strip_accents(text).lower()"},
}
# What a copy of the example looks like: its distinctive words (bench/prompt_ab.py counts outputs holding any).
TEMPLATE_PHRASES: tuple[str, ...] = ("slug", "test_accents", "strip_accents", "normalize()", "Crème brûlée",
                                     "11 of 12 tests", "return text.lower()")

# What each trap slice asks of the model, by trap kind (the kinds live in kernel/traps.py; a test checks
# that every kind has its line here and nothing else).
TRAP_ASKS: dict[str, str] = {
    "SCHEMA_VIOLATION": "your answer was not one valid frame: answer with one JSON object with the keys "
                        "thought, q_next and op, and nothing around it",
    "PAGE_FAULT": "that path does not exist: list the files (ls) and read a path that is there",
    "PATH_ESCAPE": "paths stay inside the workspace: use a relative path without '..'",
    # Also what a command gets when the workspace went over its quota or the sandbox's reply was garbled.
    "IO_FAULT": "a write or a command failed on the file system (denied, disk or quota full): check what is "
                "there, remove what you do not need, then try again",
    "EXEC_TIMEOUT": "the command was killed at its timeout: run something that ends sooner, or set timeout_s",
    "LOG_FLOOD": "the output was flooded; it is kept whole: read the page you need, or run a quieter command",
    "WATCHDOG": "you repeated an action on an unchanged workspace and got the same result; it was not run "
                "again: do something else",
    "THRASHING": "your last actions changed nothing and showed nothing new: change approach",
    "ILLEGAL_HALT": "the verifier rejected the halt, the goal is not met: read its summary and keep working",
    "ORACLE_FAULT": "the model call failed and nothing ran: answer again",
}

_OP_LINES = (
    ("SYS_READ", "path, page", "show a file, or page N of a long output (pages count from 0; page is optional)"),
    ("SYS_WRITE", "path, content", "write a whole file"),
    ("SYS_EDIT", "path, search, replace", "replace one exact, unique piece of a file"),
    ("SYS_EXEC", "cmd, timeout_s", "run a shell command in the workspace (timeout_s is optional)"),
    ("SYS_HALT", "reason", "say the goal is met; the task's verifier checks it"),
)


def _render_isa() -> str:
    ops = "\n".join(f"  {name:<10}{fields:<23}{what}" for name, fields, what in _OP_LINES)
    asks = "\n".join(f"  {kind}: {ask}" for kind, ask in TRAP_ASKS.items())
    ex = EXAMPLE_FRAME
    op = ex["op"]
    return f"""You are the transition function of a kernel that does a software task step by step. Each turn the
kernel shows you the GOAL, your register q (the notes you wrote last turn) and the slice s at pointer d:
a file, a command's output, or a fault. Answer with exactly one JSON object and nothing else (no prose,
no code fences), with three keys in this order: thought (one short sentence: what s tells you), q_next
(your notes for the next turn: what is done, what fails, what comes next; the kernel keeps nothing else
for you) and op (one action: an object with the op's name and its fields). The ops:
{ops}
Write your own values from your goal and your slice. For instance, an agent on another project (a
URL-slug library, not your task) that had just seen one test fail chose:
  thought = {ex["thought"]}
  q_next = {ex["q_next"]}
  op = {op["name"]} on the file {op["path"]}: the line '{op["search"].strip()}' becomes '{op["replace"].strip()}'
Long output is cut to its head and tail, with the exact SYS_READ that shows the rest. A fault comes back
as the slice at d=sys://trap/KIND and asks this of you:
{asks}"""


ISA_PROMPT = _render_isa()

# -- what copying the prompt looks like -------------------------------------------------------------------

# A frame copies its prompt when a value is a key or an op name of the frame itself (`"path": "path"`), or
# holds a run of COPY_WORDS consecutive words of the prompt (`"q_next": "what is done, what fails, what comes
# next"`). Five words: four-word runs are common English ("the goal is met"), a five-word run in a
# 135M model's thought is its prompt read back. TEMPLATE_PHRASES catches copies of the worked example.
COPY_WORDS = 5
FRAME_WORDS: frozenset[str] = frozenset(
    {"thought", "q_next", "op", "name"}
    | {f.strip() for _, fields, _ in _OP_LINES for f in fields.split(",")}
    | {name.lower() for name, _, _ in _OP_LINES} | {name for name, _, _ in _OP_LINES})
_WORD = re.compile(r"[a-z0-9_]+")


def _word_runs(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


_PROMPT_RUNS: dict[str, set[tuple[str, ...]]] = {}


def prompt_copies(frame: dict[str, Any], prompt: str = ISA_PROMPT) -> list[str]:
    """What a parsed frame (a dict) copied from `prompt`: `key:FIELD=VALUE` for an op value that is a frame
    word, `words:...` for each run of COPY_WORDS prompt words in a text value, `example:...` for each worked
    example phrase. Empty for a frame written from its own goal and slice."""
    if prompt not in _PROMPT_RUNS:
        _PROMPT_RUNS[prompt] = _word_runs(prompt, COPY_WORDS)
    runs = _PROMPT_RUNS[prompt]
    raw_op = frame.get("op")
    op: dict[str, Any] = raw_op if isinstance(raw_op, dict) else {}
    texts = [(k, frame.get(k)) for k in ("thought", "q_next")] + [(k, v) for k, v in op.items() if k != "name"]
    found: list[str] = []
    for key, value in texts:
        if not isinstance(value, str):
            continue
        if key not in ("thought", "q_next") and value.strip() in FRAME_WORDS:
            found.append(f"key:{key}={value.strip()}")
        found += [f"words:{' '.join(run)}" for run in sorted(_word_runs(value, COPY_WORDS) & runs)]
        found += [f"example:{p}" for p in TEMPLATE_PHRASES if p in value and p in prompt]
    return found

# -- the context -----------------------------------------------------------------------------------------

GOAL_PREFIX = "GOAL:\n"
REGISTER_HEAD = "REGISTER q:\n"
SLICE_HEAD = "SLICE at d="
TAIL_END = "Answer with one JSON frame."


def goal_text(goal: str) -> str:
    return GOAL_PREFIX + goal


def observation(d: str, slice_text: str) -> str:
    """A past tick's slice as the history shows it."""
    return f"{SLICE_HEAD}{d}:\n{slice_text}"


def tail(q: str, d: str, slice_text: str) -> str:
    """The last user message of every tick: the register, then the slice at the pointer."""
    return f"{REGISTER_HEAD}{q}\n\n{observation(d, slice_text)}\n\n{TAIL_END}"


_TAIL = re.compile(re.escape(REGISTER_HEAD) + r"(.*?)\n\n" + re.escape(SLICE_HEAD) + r"([^\n]*):\n(.*)\n\n"
                   + re.escape(TAIL_END) + r"\Z", re.DOTALL)


def split_tail(text: str) -> tuple[str, str, str] | None:
    """(q, d, slice) of a tick's tail, or None when the text is not one. The inverse of `tail`: a register
    that itself contains a blank line followed by `SLICE at d=` is the only text it cannot split back."""
    m = _TAIL.match(text)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def mask_line(tick: int, tokens: int) -> str:
    return f"[observation of tick {tick} masked: {tokens} tokens; re-read it if you need it]"


PROBE_QUESTION = ("Kernel probe (not a tick, no frame needed): in one or two plain sentences, what is your goal "
                  "and what is your next step?")

# -- slices ----------------------------------------------------------------------------------------------

START_LISTING = "Files in the workspace:\n"


def start_slice(listing: str) -> str:
    return f"Task started. {START_LISTING}{listing}"


def trap_slice(kind: str, detail: str) -> str:
    return f"TRAP {kind}: {detail}\nWhat to do: {TRAP_ASKS[kind]}."


def panic_slice(number: int, kind: str, detail: str, budget_left: int, goal: str) -> str:
    return (f"PANIC {number}: {kind} ({detail[:300]}). The history was cleared; panic budget left: {budget_left}. "
            f"Re-read the goal, check your register, and take a different action.\n{goal_text(goal)}")


def read_slice(path: str, page: int, pages: int, chars: int, body: str) -> str:
    more = f"; next: {read_op(path, page + 1)}" if page + 1 < pages else ""
    return f"{path} (page {page} of pages 0-{pages - 1}, {chars} chars{more})\n{body}"


def read_op(path: str, page: int) -> str:
    return json.dumps({"name": "SYS_READ", "path": path, "page": page})


def write_result(verb: str, path: str, size: int, changed: bool) -> str:
    return f"{verb}: {path} ({size} bytes, {'changed' if changed else 'unchanged (same content)'})"


def is_write_result(slice_text: str, path: str, verb: str = "write") -> bool:
    """Whether a slice is `write_result` for this path (a scripted expert's check that its write landed)."""
    return slice_text.startswith(f"{verb}: {path} (")


def edit_miss(path: str, count: int) -> str:
    why = "not found" if count == 0 else f"found {count} times (it must be unique)"
    return f"edit: {path}: search text {why}; nothing changed"


def exec_head(cmd: str, exit_code: int, size: int, timed_out_after: float | None, spawn_error: str | None) -> str:
    # No wall-clock time here: it would make identical outcomes look like new information and a replay diverge.
    timed_out = f", TIMED OUT after {timed_out_after:g}s" if timed_out_after is not None else ""
    head = f"$ {cmd}\n[exit {exit_code}{timed_out}, {size} bytes of output]\n"
    return head + (f"[{spawn_error}]\n" if spawn_error else "")


_EXEC_HEAD = re.compile(r"\$ (.*?)\n\[exit (-?\d+)(, TIMED OUT after [^\],]*)?, \d+ bytes of output\]\n", re.DOTALL)


def split_exec_head(slice_text: str) -> tuple[str, int, bool, str] | None:
    """(command, exit code, timed out, the rest) of a slice `exec_head` began, or None for any other slice.
    The rest starts with the spawn error line when there was one."""
    m = _EXEC_HEAD.match(slice_text)
    return (m.group(1), int(m.group(2)), m.group(3) is not None, slice_text[m.end():]) if m else None


def paging_note(size: int, sha256: str, spill: str, pages: int, page_chars: int, kept: int | None) -> str:
    """The line between an output's head and tail: how big it is, and the exact op that shows the rest."""
    kept_note = f" (its first {kept} bytes were kept)" if kept is not None else ""
    return (f"... [{size} bytes in all, sha256 {sha256[:16]}; only the head and the tail are shown. The whole "
            f"output{kept_note} is {spill}, {pages} pages of {page_chars} chars (0-{pages - 1}): "
            f"{read_op(spill, 0)} shows the first] ...")


def halt_accepted(summary: str) -> str:
    return f"HALT accepted: {summary}"


def halt_refused(summary: str) -> str:
    return f"the task's verifier does not accept the halt: {summary}"


def unreadable(d: str, err: str) -> str:
    return f"{d}: no longer readable ({err})"
