"""Hidden checks of SPEC.md section 7 (ledger/reports.py), end to end through the parser."""

from ledger.journal import Journal
from ledger.parser import parse_ledger
from ledger.reports import balance_sheet, format_trial_balance, net_income, trial_balance

BOOKS = """open Assets:Bank:Checking
open Assets:Bank:Savings
open Assets:Cash
open Liabilities:Loan
open Equity:Capital
open Income:Consulting
open Expenses:Travel
open Expenses:Office

2024-04-01 Capital
  Assets:Bank:Checking  5000
  Equity:Capital
2024-04-03 Loan
  Assets:Bank:Checking  2000
  Liabilities:Loan
2024-04-10 Invoice 17
  Assets:Bank:Checking  1500.25
  Income:Consulting
2024-04-11 Train
  Expenses:Travel  89.90
  Assets:Cash     -89.90
2024-05-02 Chairs
  Expenses:Office  410
  Assets:Bank:Checking
2024-05-03 Savings
  Assets:Bank:Savings  1000
  Assets:Bank:Checking
"""


def test_trial_balance_rows():
    assert trial_balance(parse_ledger(BOOKS)) == [
        ("Assets:Bank:Checking", 709025), ("Assets:Bank:Savings", 100000), ("Assets:Cash", -8990),
        ("Equity:Capital", -500000), ("Expenses:Office", 41000), ("Expenses:Travel", 8990),
        ("Income:Consulting", -150025), ("Liabilities:Loan", -200000),
    ]


def test_trial_balance_until_skips_zero_rows():
    assert trial_balance(parse_ledger(BOOKS), until="2024-04-05") == [
        ("Assets:Bank:Checking", 700000), ("Equity:Capital", -500000), ("Liabilities:Loan", -200000)]
    assert trial_balance(Journal()) == []


def test_net_income_and_balance_sheet():
    journal = parse_ledger(BOOKS)
    assert net_income(journal) == 150025 - 8990 - 41000
    assert net_income(journal, until="2024-04-30") == 150025 - 8990
    assert balance_sheet(journal) == {"Assets": 800035, "Liabilities": 200000, "Equity": 600035}
    april = balance_sheet(journal, until="2024-04-30")
    assert april == {"Assets": 841035, "Liabilities": 200000, "Equity": 641035}


def test_balance_sheet_always_balances():
    journal = parse_ledger(BOOKS)
    for until in (None, "2024-04-01", "2024-04-10", "2024-05-02", "2030-01-01"):
        sheet = balance_sheet(journal, until=until)
        assert sheet["Assets"] == sheet["Liabilities"] + sheet["Equity"]


def test_format_trial_balance_exact_text():
    expected = "\n".join([
        "Assets:Bank:Checking               7090.25",
        "Assets:Bank:Savings                1000.00",
        "Assets:Cash                         -89.90",
        "Equity:Capital                    -5000.00",
        "Expenses:Office                     410.00",
        "Expenses:Travel                      89.90",
        "Income:Consulting                 -1500.25",
        "Liabilities:Loan                  -2000.00",
        "-" * 42,
        "Total                              8590.15",
    ])
    assert format_trial_balance(parse_ledger(BOOKS)) == expected


def test_format_trial_balance_of_an_empty_journal():
    assert format_trial_balance(Journal()) == "-" * 42 + "\n" + "Total" + " " * 25 + "        0.00"
