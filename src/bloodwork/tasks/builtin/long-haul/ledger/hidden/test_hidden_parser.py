"""Hidden checks of SPEC.md section 6 (ledger/parser.py)."""

import pytest
from ledger.errors import ParseError
from ledger.journal import Journal
from ledger.parser import parse_ledger
from ledger.transaction import Posting

BOOKS = """; books of a small shop
open Assets:Till
open Assets:Bank
  ; an indented comment is skipped too
open Income:Sales
open Expenses:Stock

2024-05-02   Restock   from the wholesaler
\tExpenses:Stock   120.50
\tAssets:Bank
2024-05-01 Sales
  Assets:Till  300
  Income:Sales -300.00

  Assets:Bank 0
2024-05-03
  Assets:Bank   250
  Assets:Till   -250"""


def test_parses_a_full_example():
    journal = parse_ledger(BOOKS)
    assert isinstance(journal, Journal)
    assert journal.chart.names() == ["Assets:Bank", "Assets:Till", "Expenses:Stock", "Income:Sales"]
    first, second, third = journal.transactions()
    assert (first.date, first.description) == ("2024-05-01", "Sales")
    assert first.postings == (Posting("Assets:Till", 30000), Posting("Income:Sales", -30000),
                              Posting("Assets:Bank", 0))
    assert second.description == "Restock   from the wholesaler"
    assert second.postings == (Posting("Expenses:Stock", 12050), Posting("Assets:Bank", -12050))
    assert (third.date, third.description) == ("2024-05-03", "")
    assert journal.balance("Assets") == 30000 - 12050


def test_empty_and_comment_only_texts():
    assert parse_ledger("").transactions() == []
    journal = parse_ledger("; nothing\n\n   \nopen Assets:Bank\n")
    assert journal.chart.names() == ["Assets:Bank"] and journal.transactions() == []


def _line_of(text: str) -> int | None:
    """The line_no of the ParseError the text raises (None if it raises none)."""
    try:
        parse_ledger(text)
    except ParseError as err:
        return err.line_no
    return None


HEAD = "open Assets:A\nopen Assets:B\n\n"  # lines 1-3


ERRORS = [  # (text after HEAD, line_no of the ParseError)
    ("2024-01-01 unbalanced\n  Assets:A 1\n  Assets:B -2\n", 4),
    ("2024-02-30 bad date\n  Assets:A 1\n  Assets:B\n", 4),
    ("2024-01-01 unknown account\n  Assets:A 1\n  Assets:C\n", 4),
    ("2024-01-01 one posting\n  Assets:A 0\n\n; end\n", 4),
    ("2024-01-01 ok\n  Assets:A 1\n  Assets:B\n2024-01-02 two elided\n  Assets:A\n  Assets:B\n", 7),
    ("2024-01-01 x\n  Assets:A 1.234\n  Assets:B\n", 5),
    ("2024-01-01 x\n  Assets:A 1 2\n  Assets:B\n", 5),
    ("  Assets:A 1\n", 4),
    ("2024/01/01 slashes\n", 4),
    ("open Assets:A\n", 4),
    ("open Cash\n", 4),
    ("open Assets:C extra\n", 4),
    ("2024-01-01 x\n  Assets:A 1\n  Assets:B\nopen Assets:B\n", 7),
]


def test_error_line_numbers():
    got = [(body, _line_of(HEAD + body)) for body, _ in ERRORS]
    assert got == ERRORS


def test_accounts_must_be_opened_above_their_use():
    text = "2024-01-01 early\n  Assets:A 1\n  Assets:B\nopen Assets:A\nopen Assets:B\n"
    assert _line_of(text) == 1


def test_parse_error_message_names_the_line():
    with pytest.raises(ParseError, match=r"^line 2: "):
        parse_ledger("open Assets:A\nnonsense here\n")
