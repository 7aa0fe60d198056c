"""Postings and balanced transactions (SPEC.md section 4)."""

import datetime
import re
from dataclasses import dataclass

from ledger.accounts import account_kind
from ledger.errors import LedgerError, UnbalancedError

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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
        return sum(p.amount for p in self.postings if p.amount > 0)


def check_date(date: str) -> None:
    """LedgerError unless date is a real YYYY-MM-DD date."""
    try:
        if not _DATE.fullmatch(date):
            raise ValueError(date)
        datetime.date.fromisoformat(date)
    except ValueError as err:
        raise LedgerError(f"bad date: {date!r}") from err


def make_transaction(date: str, description: str, postings: list[tuple[str, int | None]]) -> Transaction:
    """A checked, balanced Transaction; at most one amount may be None."""
    check_date(date)
    if len(postings) < 2:
        raise UnbalancedError("a transaction needs at least two postings")
    for account, _ in postings:
        account_kind(account)
    if sum(1 for _, amount in postings if amount is None) > 1:
        raise UnbalancedError("only one amount may be left out")
    rest = sum(amount for _, amount in postings if amount is not None)
    done = [Posting(a, -rest if x is None else x) for a, x in postings]
    if sum(p.amount for p in done) != 0:
        raise UnbalancedError(f"postings sum to {rest}, not 0")
    return Transaction(date, description.strip(), tuple(done))
