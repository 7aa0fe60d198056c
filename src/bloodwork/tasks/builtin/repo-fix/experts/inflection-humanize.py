"""SCRIPTED expert policy for `repo-fix/inflection-humanize`: a test fixture and demo, not a model.

Written by hand, it walks the whole chain the verifier scores: it runs the suite (green: the bug is
not covered), writes a reproduction test and watches it fail, fixes the regular expression in
`humanize`, runs the reproduction and the suite again, writes PR.md and halts. Runs driven by it are
scripted runs (`--model scripted:.../inflection-humanize.py`, tagged `provenance: scripted`) and must
never be counted as model behaviour.

`policy(call, messages)` depends on `call.tick` alone; past the end of the plan it keeps halting.
`EXPECT_EXIT` gives, for each SYS_EXEC tick, the exit code the command should have at that point.
"""

from __future__ import annotations

import json
from typing import Any

REPRO = '''import inflection


def test_humanize_keeps_id_inside_words():
    assert inflection.humanize("user_identity") == "User identity"
    assert inflection.humanize("valid_id_card") == "Valid id card"


def test_titleize_keeps_id_inside_words():
    assert inflection.titleize("user_identity") == "User Identity"


def test_humanize_still_drops_a_trailing_id():
    assert inflection.humanize("author_id") == "Author"
'''

PR = '''# Only strip a trailing "_id" in humanize()

## Cause
`humanize()` removed "_id" with the pattern `_id` instead of `_id$`, so it dropped the three
characters wherever they occurred: "user_identity" became "Userentity". `titleize()` goes through
`humanize()` and inherited the bug.

## Fix
Anchor the pattern at the end of the string (`_id$`), as the docstring describes: only a trailing
"_id" is removed ("author_id" -> "Author").

## Testing
- New `test_humanize_id.py`: "_id" inside words is kept by `humanize()` and `titleize()`, and a
  trailing "_id" is still dropped. It failed before the fix and passes after it.
- The whole suite (`python3 -m pytest -q .`) passes.
'''

PYTEST = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -q -p no:cacheprovider"

PLAN: list[tuple[str, dict[str, Any]]] = [
    ("Look at the state of the repository and run the existing tests first.",
     {"name": "SYS_EXEC", "cmd": f"git log --oneline -1 && {PYTEST} ."}),
    ("The suite is green, so the bug is not covered. Reproduce it with a test of its own.",
     {"name": "SYS_WRITE", "path": "test_humanize_id.py", "content": REPRO}),
    ("Run the reproduction; it must fail on the current code.",
     {"name": "SYS_EXEC", "cmd": f"{PYTEST} test_humanize_id.py"}),
    ("Find where humanize strips the id suffix.",
     {"name": "SYS_EXEC", "cmd": "grep -n '_id' inflection/__init__.py"}),
    ("The pattern `_id` is not anchored; anchor it at the end.",
     {"name": "SYS_EDIT", "path": "inflection/__init__.py", "search": 'word = re.sub(r"_id", "", word)',
      "replace": 'word = re.sub(r"_id$", "", word)'}),
    ("Run the reproduction and the whole suite.",
     {"name": "SYS_EXEC", "cmd": f"{PYTEST} ."}),
    ("Write the PR draft.", {"name": "SYS_WRITE", "path": "PR.md", "content": PR}),
    ("Reproduced, fixed, tested, PR drafted.",
     {"name": "SYS_HALT", "reason": "humanize() strips only a trailing _id; tests pass; PR.md written"}),
]

EXPECT_EXIT = {0: 0, 2: 1, 3: 0, 5: 0}


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    thought, op = PLAN[min(call.tick, len(PLAN) - 1)]
    return json.dumps({"thought": thought, "q_next": f"step {min(call.tick, len(PLAN) - 1) + 1} of {len(PLAN)}",
                       "op": op})
