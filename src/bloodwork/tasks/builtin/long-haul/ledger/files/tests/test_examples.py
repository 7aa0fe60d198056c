"""Example tests: a small sample of what the ledger package must do (SPEC.md has it all)."""

from pathlib import Path

from ledger.money import format_amount, parse_amount
from ledger.parser import parse_ledger
from ledger.reports import balance_sheet, format_trial_balance
from ledger.transaction import Posting, make_transaction

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "household.ledger"


def test_amounts_round_trip():
    assert parse_amount("12.5") == 1250
    assert format_amount(1250) == "12.50"
    assert format_amount(-150) == "-1.50"


def test_elided_amount_balances_the_transaction():
    txn = make_transaction("2024-01-06", " Rent ", [("Expenses:Rent", 120000), ("Assets:Bank", None)])
    assert txn.description == "Rent"
    assert txn.postings == (Posting("Expenses:Rent", 120000), Posting("Assets:Bank", -120000))


def test_parse_example_file():
    journal = parse_ledger(EXAMPLE.read_text())
    assert len(journal.transactions()) == 5
    assert journal.balance("Assets:Bank") == 420000
    assert journal.balance("Assets") == 430000


def test_balance_sheet_balances():
    sheet = balance_sheet(parse_ledger(EXAMPLE.read_text()))
    assert sheet == {"Assets": 430000, "Liabilities": 8435, "Equity": 421565}


def test_trial_balance_total_line():
    text = format_trial_balance(parse_ledger(EXAMPLE.read_text()))
    assert text.splitlines()[0] == "Assets:Bank" + " " * 19 + "     4200.00"
    assert text.splitlines()[-1] == "Total" + " " * 25 + "     5584.35"
