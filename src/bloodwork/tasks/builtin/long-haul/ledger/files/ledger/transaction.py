"""Postings and balanced transactions (SPEC.md section 4)."""

from dataclasses import dataclass

from ledger.accounts import account_kind  # noqa: F401
from ledger.errors import LedgerError, UnbalancedError  # noqa: F401


@dataclass(frozen=True)
class Posting:
    account: str
    amount: int


@dataclass(frozen=True)
class Transaction:
    date: str
    description: str
    postings: tuple[Posting, ...]

    def total(self) -> int:
        """The sum of the positive amounts."""
        raise NotImplementedError


def make_transaction(date: str, description: str, postings: list[tuple[str, int | None]]) -> Transaction:
    """A checked, balanced Transaction; at most one amount may be None."""
    raise NotImplementedError
