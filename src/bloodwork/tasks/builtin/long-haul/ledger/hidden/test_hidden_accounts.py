"""Hidden checks of SPEC.md section 3 (ledger/accounts.py)."""

import pytest
from ledger.accounts import KINDS, Chart, account_kind, is_debit_normal
from ledger.errors import AccountError


def test_kinds_constant():
    assert KINDS == ("Assets", "Liabilities", "Equity", "Income", "Expenses")


def test_account_kind_of_valid_names():
    cases = {"Assets": "Assets", "Assets:Bank:Checking": "Assets", "Liabilities:Card-2": "Liabilities",
             "Equity:Opening_Balance": "Equity", "Income:Salary": "Income", "Expenses:Food:2024": "Expenses"}
    assert {name: account_kind(name) for name in cases} == cases


def test_account_kind_rejects_invalid_names():
    accepted = []
    for name in ["", "Cash", "Assets:", "Assets::Cash", "Assets:My Bank", "assets:Cash", ":Assets",
                 "Assets:Cafe!", " Assets:Bank", "Revenue:Sales", "Assets:Bank\n"]:
        try:
            account_kind(name)
        except AccountError:
            continue
        accepted.append(name)
    assert accepted == []


def test_is_debit_normal():
    assert is_debit_normal("Assets:Bank") and is_debit_normal("Expenses:Rent")
    assert not any(is_debit_normal(n) for n in ("Liabilities:Card", "Equity:Opening", "Income:Salary"))
    with pytest.raises(AccountError):
        is_debit_normal("Bank")


def test_chart_open_contains_names_under():
    chart = Chart()
    for name in ("Assets:Bank", "Expenses:Food", "Assets", "Assets:Bank:Savings", "Income:Job"):
        chart.open(name)
    assert "Assets:Bank" in chart and "Assets:Cash" not in chart
    assert chart.names() == ["Assets", "Assets:Bank", "Assets:Bank:Savings", "Expenses:Food", "Income:Job"]
    assert chart.under("Assets") == ["Assets", "Assets:Bank", "Assets:Bank:Savings"]
    assert chart.under("Assets:Bank") == ["Assets:Bank", "Assets:Bank:Savings"]
    assert chart.under("Assets:Ba") == []
    assert chart.under("Liabilities") == []


def test_chart_refuses_invalid_and_duplicate_accounts():
    chart = Chart()
    chart.open("Assets:Bank")
    with pytest.raises(AccountError):
        chart.open("Assets:Bank")
    with pytest.raises(AccountError):
        chart.open("Bank")
    assert chart.names() == ["Assets:Bank"]


def test_charts_do_not_share_state():
    first, second = Chart(), Chart()
    first.open("Assets:Bank")
    assert second.names() == []
