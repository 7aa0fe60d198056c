"""Amounts as integer cents (SPEC.md section 2)."""

import re

from ledger.errors import AmountError

_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]{1,2})?")


def parse_amount(text: str) -> int:
    """A decimal string such as "-12.50" to cents (-1250); AmountError if malformed."""
    text = text.strip()
    if not _AMOUNT.fullmatch(text):
        raise AmountError(f"not an amount: {text!r}")
    whole, _, frac = text.lstrip("-").partition(".")
    cents = int(whole) * 100 + int(frac.ljust(2, "0"))
    return -cents if text.startswith("-") else cents


def format_amount(cents: int) -> str:
    """Cents to a string with two decimals: -150 -> "-1.50"."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"
