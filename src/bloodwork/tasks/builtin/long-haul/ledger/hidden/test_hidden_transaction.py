"""Hidden checks of SPEC.md section 4 (ledger/transaction.py)."""

import dataclasses

import pytest
from ledger.errors import AccountError, LedgerError, UnbalancedError
from ledger.transaction import Posting, Transaction, make_transaction


def test_balanced_transaction_keeps_order_and_strips_description():
    txn = make_transaction("2024-03-01", "  Coffee and cake \n",
                           [("Expenses:Food", 450), ("Expenses:Tips", 50), ("Assets:Cash", -500)])
    assert txn == Transaction("2024-03-01", "Coffee and cake", (
        Posting("Expenses:Food", 450), Posting("Expenses:Tips", 50), Posting("Assets:Cash", -500)))
    assert isinstance(txn.postings, tuple)
    assert txn.total() == 500


def test_elided_amount_in_the_middle():
    txn = make_transaction("2024-03-02", "split", [("Assets:Bank", 1000), ("Income:Salary", None),
                                                   ("Income:Bonus", -250)])
    assert [p.amount for p in txn.postings] == [1000, -750, -250]


def test_zero_amounts_are_allowed():
    txn = make_transaction("2024-03-03", "", [("Assets:A", 0), ("Assets:B", 0)])
    assert txn.total() == 0 and txn.description == ""


def test_dataclasses_are_frozen():
    txn = make_transaction("2024-03-04", "x", [("Assets:A", 1), ("Assets:B", None)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        txn.date = "2024-01-01"
    with pytest.raises(dataclasses.FrozenInstanceError):
        txn.postings[0].amount = 5


def test_bad_dates_raise_ledger_error():
    accepted = []
    for date in ["2024-02-30", "20240105", "2024-1-05", "2024-13-01", "", "2024-01-05 ", "05-01-2024",
                 "2024-W01-1", "2023-02-29"]:
        try:
            make_transaction(date, "x", [("Assets:A", 1), ("Assets:B", -1)])
        except LedgerError:
            continue
        accepted.append(date)
    assert accepted == []


def test_leap_day_is_a_real_date():
    assert make_transaction("2024-02-29", "leap", [("Assets:A", 1), ("Assets:B", -1)]).date == "2024-02-29"


def test_too_few_postings():
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [("Assets:A", 0)])
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [])


def test_invalid_account_raises_account_error():
    with pytest.raises(AccountError):
        make_transaction("2024-01-01", "x", [("Assets:A", 1), ("Cash", -1)])


def test_two_elided_amounts_and_unbalanced_sums():
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [("Assets:A", 1), ("Assets:B", None), ("Assets:C", None)])
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [("Assets:A", 100), ("Income:B", -99)])


def test_checks_run_in_spec_order():
    with pytest.raises(LedgerError) as bad_date:
        make_transaction("2024-02-30", "x", [("Cash", 1)])
    assert not isinstance(bad_date.value, (UnbalancedError, AccountError))
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [("Cash", 1)])
    with pytest.raises(AccountError):
        make_transaction("2024-01-01", "x", [("Cash", 1), ("Assets:B", None), ("Assets:C", None)])
    with pytest.raises(UnbalancedError):
        make_transaction("2024-01-01", "x", [("Assets:A", 5), ("Assets:B", None), ("Assets:C", None)])
