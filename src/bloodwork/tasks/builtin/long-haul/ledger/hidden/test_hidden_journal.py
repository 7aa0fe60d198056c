"""Hidden checks of SPEC.md section 5 (ledger/journal.py)."""

import pytest
from ledger.accounts import Chart
from ledger.errors import AccountError
from ledger.journal import Journal
from ledger.transaction import make_transaction

ACCOUNTS = ("Assets:Bank", "Assets:Bank:Savings", "Assets:Cash", "Income:Salary", "Expenses:Food")


def _journal() -> Journal:
    journal = Journal()
    for name in ACCOUNTS:
        journal.chart.open(name)
    journal.add(make_transaction("2024-02-01", "feb pay", [("Assets:Bank", 2000), ("Income:Salary", None)]))
    journal.add(make_transaction("2024-01-15", "save", [("Assets:Bank:Savings", 300), ("Assets:Bank", None)]))
    journal.add(make_transaction("2024-01-01", "jan pay", [("Assets:Bank", 1000), ("Income:Salary", None)]))
    journal.add(make_transaction("2024-01-15", "lunch", [("Expenses:Food", 25), ("Assets:Cash", -25)]))
    return journal


def test_default_and_given_chart():
    assert isinstance(Journal().chart, Chart)
    assert Journal().chart is not Journal().chart
    chart = Chart()
    assert Journal(chart).chart is chart


def test_add_needs_open_accounts_and_changes_nothing_on_error():
    journal = _journal()
    with pytest.raises(AccountError):
        journal.add(make_transaction("2024-03-01", "x", [("Assets:Bank", 5), ("Liabilities:Card", -5)]))
    assert len(journal.transactions()) == 4


def test_transactions_sorted_by_date_and_stable():
    journal = _journal()
    assert [t.description for t in journal.transactions()] == ["jan pay", "save", "lunch", "feb pay"]
    listing = journal.transactions()
    listing.clear()
    assert len(journal.transactions()) == 4


def test_balance_rolls_up_sub_accounts():
    journal = _journal()
    assert journal.balance("Assets:Bank") == 3000
    assert journal.balance("Assets:Bank:Savings") == 300
    assert journal.balance("Assets") == 2975
    assert journal.balance("Income") == -3000
    assert journal.balance("Assets:Ba") == 0
    assert journal.balance("Liabilities") == 0


def test_balance_until_a_date():
    journal = _journal()
    assert journal.balance("Assets:Bank", until="2024-01-14") == 1000
    assert journal.balance("Assets:Bank", until="2024-01-15") == 1000
    assert journal.balance("Assets", until="2024-01-31") == 975
    assert journal.balance("Assets", until="2023-12-31") == 0


def test_balances_are_exact_and_include_zeros():
    journal = _journal()
    journal.chart.open("Liabilities:Card")
    assert journal.balances() == {"Assets:Bank": 2700, "Assets:Bank:Savings": 300, "Assets:Cash": -25,
                                  "Expenses:Food": 25, "Income:Salary": -3000, "Liabilities:Card": 0}
    assert journal.balances(until="2024-01-10")["Assets:Bank"] == 1000
    assert journal.balances(until="2024-01-10")["Assets:Bank:Savings"] == 0


def test_register_has_running_totals_in_journal_order():
    assert _journal().register("Assets:Bank") == [
        ("2024-01-01", "jan pay", 1000, 1000),
        ("2024-01-15", "save", 300, 1300),
        ("2024-01-15", "save", -300, 1000),
        ("2024-02-01", "feb pay", 2000, 3000),
    ]
    assert _journal().register("Liabilities") == []
