"""Amounts as integer cents (SPEC.md section 2)."""

from ledger.errors import AmountError  # noqa: F401


def parse_amount(text: str) -> int:
    """A decimal string such as "-12.50" to cents (-1250); AmountError if malformed."""
    raise NotImplementedError


def format_amount(cents: int) -> str:
    """Cents to a string with two decimals: -150 -> "-1.50"."""
    raise NotImplementedError
