"""Hidden checks of SPEC.md section 2 (ledger/money.py)."""

import pytest
from ledger.errors import AmountError, LedgerError
from ledger.money import format_amount, parse_amount


def test_parse_amount_accepts_the_spec_forms():
    cases = {"12": 1200, "12.5": 1250, "-0.05": -5, " 3.10 ": 310, "0": 0, "-7": -700,
             "1000000.99": 100000099, "007.00": 700}
    got = {text: parse_amount(text) for text in cases}
    assert got == cases
    assert all(type(cents) is int for cents in got.values())


def test_parse_amount_rejects_everything_else():
    accepted = []
    for text in ["", "  ", "abc", "+5", "1,000", ".5", "5.", "1.234", "1e3", "--1", "1.-5", "- 5", "12 .5"]:
        try:
            parse_amount(text)
        except AmountError:
            continue
        accepted.append(text)
    assert accepted == []


def test_amount_error_is_a_ledger_error():
    with pytest.raises(LedgerError):
        parse_amount("x")


def test_format_amount():
    cases = {1250: "12.50", -150: "-1.50", -5: "-0.05", 0: "0.00", 123456: "1234.56", -100: "-1.00",
             7: "0.07", -99: "-0.99"}
    assert {cents: format_amount(cents) for cents in cases} == cases


def test_round_trip_over_a_range():
    for cents in range(-1050, 1050, 7):
        assert parse_amount(format_amount(cents)) == cents
