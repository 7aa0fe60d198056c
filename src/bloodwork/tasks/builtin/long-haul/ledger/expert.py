"""SCRIPTED expert policy for `long-haul/ledger`: a test fixture and demo, not a model.

Every frame below was written by hand. The trajectory is meant to look like a competent agent's:
it reads SPEC.md and the stubs, implements the six modules one by one, runs the example tests,
makes three deliberate mistakes (a negative `format_amount`, a parser that drops the last
transaction, a trial-balance total that sums to zero), sees each one fail, fixes each with a
SYS_EDIT, checks a few edge cases by hand and halts. Runs driven by it are scripted runs
(`--model scripted:.../expert.py`, tagged `provenance: scripted`) and must never be counted as
model behaviour.

`policy(call, messages)` is stateless: the frame depends on `call.tick` alone (0-based); past the
end of the plan it keeps answering the SYS_HALT frame. `EXPECT_EXIT` says, for every SYS_EXEC tick,
whether the command is expected to exit 0 at that point of the plan, so tests can check that the
story the thoughts tell (a failing test, then a fix) is true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# --- the finished modules: the task's reference solution (solution/, also read by expert:long-haul/ledger) ---

SOLUTION = Path(__file__).resolve().with_name("solution") / "ledger"
MONEY, ACCOUNTS, TRANSACTION, JOURNAL, PARSER, REPORTS = (
    (SOLUTION / f"{name}.py").read_text()
    for name in ("money", "accounts", "transaction", "journal", "parser", "reports"))

# --- the three deliberate mistakes: (correct text, buggy text) ------------------------------------

MONEY_FIX = ('    sign = "-" if cents < 0 else ""\n    whole, frac = divmod(abs(cents), 100)\n'
             '    return f"{sign}{whole}.{frac:02d}"\n')
MONEY_BUG = '    whole, frac = divmod(cents, 100)\n    return f"{whole}.{frac:02d}"\n'
PARSER_FIX = "    flush()\n    return journal\n"
PARSER_BUG = "    return journal\n"
REPORTS_FIX = "    total = sum(amount for _, amount in rows if amount > 0)\n"
REPORTS_BUG = "    total = sum(amount for _, amount in rows)\n"


def _buggy(source: str, fix: str, bug: str) -> str:
    if source.count(fix) != 1:
        raise AssertionError(f"the fix text must occur once in the module: {fix!r}")
    return source.replace(fix, bug)


# --- frames ---------------------------------------------------------------------------------------

def _read(path: str, page: int = 0) -> dict[str, Any]:
    op: dict[str, Any] = {"name": "SYS_READ", "path": path}
    if page:
        op["page"] = page
    return op


def _write(path: str, content: str) -> dict[str, Any]:
    return {"name": "SYS_WRITE", "path": path, "content": content}


def _edit(path: str, search: str, replace: str) -> dict[str, Any]:
    return {"name": "SYS_EDIT", "path": path, "search": search, "replace": replace}


def _exec(cmd: str) -> dict[str, Any]:
    return {"name": "SYS_EXEC", "cmd": cmd}


PYTEST = "python3 -m pytest -q"
CHECK_ACCOUNTS = ("python3 -c \"from ledger.accounts import Chart, account_kind; c = Chart(); "
                  "c.open('Assets:Bank'); c.open('Assets:Cash'); c.open('Income:Salary'); "
                  "print(account_kind('Assets:Bank'), c.names(), c.under('Assets'), 'Assets:Bank' in c)\"")
CHECK_JOURNAL = ("python3 -c \"from ledger.journal import Journal; from ledger.transaction import "
                 "make_transaction as mt; j = Journal(); [j.chart.open(a) for a in ('Assets:Bank', "
                 "'Income:Salary')]; j.add(mt('2024-02-01', 'late', [('Assets:Bank', 50), "
                 "('Income:Salary', None)])); j.add(mt('2024-01-01', 'early', [('Assets:Bank', 100), "
                 "('Income:Salary', None)])); print([t.description for t in j.transactions()], "
                 "j.balance('Assets'), j.balance('Assets', until='2024-01-31'), j.balances())\"")
CHECK_PARSE_ERRORS = ("python3 -c \"from ledger.parser import parse_ledger; from ledger.errors import "
                      "ParseError\nfor text in ['open Assets:A\\nopen Assets:B\\n2024-01-01 x\\n  Assets:A 1\\n"
                      "  Assets:B 2\\n', '  Assets:A 1\\n', 'open Assets:A\\n2024-01-01 x\\n  Assets:A 1.234\\n',"
                      " 'bogus line\\n']:\n  try:\n    parse_ledger(text); print('no error!')\n"
                      "  except ParseError as err:\n    print(err.line_no, err)\"")
CHECK_AMOUNTS = ("python3 -c \"from ledger.money import parse_amount as p, format_amount as f; "
                 "from ledger.errors import AmountError\nprint(p(' 3.10 '), p('-0.05'), p('12'), f(-5), f(0), "
                 "f(123456))\nfor bad in ['', 'abc', '+5', '1,000', '.5', '5.', '1.234', '1e3']:\n  try:\n"
                 "    p(bad); print('accepted', repr(bad))\n  except AmountError:\n    pass\nprint('bad ok')\"")
CHECK_DATES = ("python3 -c \"from ledger.transaction import make_transaction as mt; from ledger.errors "
               "import LedgerError\nfor d in ['2024-02-30', '20240105', '2024-1-05']:\n  try:\n"
               "    mt(d, 'x', [('Assets:A', 1), ('Assets:B', -1)]); print('accepted', d)\n"
               "  except LedgerError as err:\n    print(type(err).__name__, err)\"")
CHECK_REPORTS = ("python3 -c \"from ledger.parser import parse_ledger; from ledger.reports import "
                 "format_trial_balance, net_income; j = parse_ledger(open('examples/household.ledger').read());"
                 " print(format_trial_balance(j)); print(net_income(j), j.register('Assets:Bank')[-1])\"")

HALT_REASON = ("All six modules of ledger/ implement SPEC.md; the example tests pass and edge cases "
               "(bad amounts, bad dates, parse error lines) were checked by hand.")

FAILS = "fails"  # marks a SYS_EXEC step that is expected to exit non-zero

# (thought, q_next, op[, FAILS]); the frame for tick i is built from _STEPS[i].
_STEPS: list[tuple[Any, ...]] = [
    ("Start by reading the spec.", "plan: read SPEC.md, then implement ledger/ modules in order 2-7",
     _read("SPEC.md")),
    ("The spec continues on the next page.", "SPEC p0 read: cents ints, money/accounts/transaction sections",
     _read("SPEC.md", 1)),
    ("Read the last page of the spec.", "SPEC p1 read: journal, parser, reports. reading p2",
     _read("SPEC.md", 2)),
    ("errors.py is done; check the exception names.",
     "spec read. order: money, accounts, transaction, journal, parser, reports", _read("ledger/errors.py")),
    ("Look at the money stub.", "errors: LedgerError AmountError AccountError UnbalancedError ParseError(line_no)",
     _read("ledger/money.py")),
    ("Implement money.py: regex for amounts, divmod for formatting.", "money.py written (untested). next accounts",
     _write("ledger/money.py", _buggy(MONEY, MONEY_FIX, MONEY_BUG))),
    ("Now the accounts stub.", "money written. next accounts.py", _read("ledger/accounts.py")),
    ("Implement account_kind with a segment regex and Chart with a set.",
     "money, accounts written. next: smoke-test accounts", _write("ledger/accounts.py", ACCOUNTS)),
    ("Quick smoke test of accounts before moving on.", "money, accounts written; checking accounts",
     _exec(CHECK_ACCOUNTS)),
    ("Accounts look right. Read the transaction stub.", "money, accounts ok(smoke). next transaction.py",
     _read("ledger/transaction.py")),
    ("Implement make_transaction with the five checks in spec order.",
     "money, accounts, transaction written. next: run example tests for them",
     _write("ledger/transaction.py", TRANSACTION)),
    ("Run the example tests that cover money and transactions.", "3 modules written; running tests",
     _exec(PYTEST + " -k 'amounts or elided'"), FAILS),
    ("format_amount(-150) gave -2.50: divmod floors negatives. Format abs() and add the sign.",
     "bug: format_amount negatives. fixing money.py", _edit("ledger/money.py", MONEY_BUG, MONEY_FIX)),
    ("Re-run the same tests.", "money fixed; re-running tests", _exec(PYTEST + " -k 'amounts or elided'")),
    ("Both pass. Next the journal stub.", "money, accounts, transaction pass. next journal.py",
     _read("ledger/journal.py")),
    ("Implement Journal: stable sort by date, balance with sub-accounts, balances exact.",
     "journal written. next: smoke-test journal", _write("ledger/journal.py", JOURNAL)),
    ("Smoke-test ordering, until and balances.", "journal written; checking it", _exec(CHECK_JOURNAL)),
    ("Order early,late; balances 150/100 as expected. Read the parser stub.",
     "money, accounts, transaction, journal ok. next parser.py", _read("ledger/parser.py")),
    ("Re-read the parser section of the spec for the line number rules.", "about to write parser.py",
     _read("SPEC.md", 1)),
    ("Write the parser: collect postings, build the transaction when the next header/open comes.",
     "parser written. next: run example parse test", _write("ledger/parser.py",
                                                            _buggy(PARSER, PARSER_FIX, PARSER_BUG))),
    ("Run the example-file test.", "parser written; testing",
     _exec(PYTEST + " tests/test_examples.py::test_parse_example_file"), FAILS),
    ("Only 4 transactions instead of 5. Look at the example file's end.",
     "parser bug: 4 of 5 transactions parsed", _read("examples/household.ledger")),
    ("The last transaction runs to the end of the file and is never flushed. Flush before returning.",
     "fixing parser: flush at EOF", _edit("ledger/parser.py", PARSER_BUG, PARSER_FIX)),
    ("Re-run the example-file test.", "parser fixed; re-testing",
     _exec(PYTEST + " tests/test_examples.py::test_parse_example_file")),
    ("Check the error line numbers: header line for unbalanced, own line otherwise.",
     "parser passes example. checking ParseError line numbers", _exec(CHECK_PARSE_ERRORS)),
    ("Lines 3, 1, 3, 1 as the spec says. Last module: reports.", "5 modules done. next reports.py",
     _read("ledger/reports.py")),
    ("Implement the reports.", "reports written. next: full example test run",
     _write("ledger/reports.py", _buggy(REPORTS, REPORTS_FIX, REPORTS_BUG))),
    ("Run all example tests.", "all modules written; running all tests", _exec(PYTEST), FAILS),
    ("The Total line shows 0.00: the spec wants the sum of the positive balances only.",
     "bug: trial balance total. fixing reports.py", _edit("ledger/reports.py", REPORTS_BUG, REPORTS_FIX)),
    ("Run all example tests again.", "reports fixed; running all tests", _exec(PYTEST)),
    ("All pass, but they are a sample. Check amount edge cases from the spec.",
     "examples pass. checking edge cases: amounts", _exec(CHECK_AMOUNTS)),
    ("Amounts fine. Check the date rules (real date, YYYY-MM-DD only).", "amounts ok. checking dates",
     _exec(CHECK_DATES)),
    ("Dates rejected as they should be. Look at the reports on the example file.",
     "dates ok. checking report output", _exec(CHECK_REPORTS)),
    ("Output matches the spec. Final full test run.", "all checks ok; final test run", _exec(PYTEST)),
    ("Everything passes.", "done", {"name": "SYS_HALT", "reason": HALT_REASON}),
]

PLAN: list[tuple[str, str, dict[str, Any]]] = [(step[0], step[1], step[2]) for step in _STEPS]
# tick -> whether that SYS_EXEC is expected to exit 0 (the runs that reveal a deliberate mistake fail).
EXPECT_EXIT: dict[int, bool] = {
    i: FAILS not in step for i, step in enumerate(_STEPS) if step[2]["name"] == "SYS_EXEC"
}


def frame(tick: int) -> str:
    """The raw frame text for a 0-based tick; the SYS_HALT frame past the end of the plan."""
    thought, q_next, op = PLAN[min(max(tick, 0), len(PLAN) - 1)]
    return json.dumps({"thought": thought, "q_next": q_next, "op": op})


def policy(call: Any, messages: list[dict[str, str]]) -> str:
    """The scripted oracle's entry point: `call.tick` picks the frame, `messages` are ignored."""
    return frame(call.tick)
