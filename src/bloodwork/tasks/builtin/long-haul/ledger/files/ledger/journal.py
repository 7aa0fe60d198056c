"""The journal: transactions over a chart of accounts (SPEC.md section 5)."""

from ledger.accounts import Chart
from ledger.errors import AccountError  # noqa: F401
from ledger.transaction import Transaction


class Journal:
    def __init__(self, chart: Chart | None = None) -> None:
        raise NotImplementedError

    def add(self, txn: Transaction) -> None:
        """Add a transaction whose accounts are all open; AccountError otherwise."""
        raise NotImplementedError

    def transactions(self) -> list[Transaction]:
        """A new list, sorted by date (stable)."""
        raise NotImplementedError

    def balance(self, account: str, until: str | None = None) -> int:
        """Sum posted to account and its sub-accounts, up to date `until`."""
        raise NotImplementedError

    def balances(self, until: str | None = None) -> dict[str, int]:
        """Every open account to the sum posted to exactly it."""
        raise NotImplementedError

    def register(self, account: str) -> list[tuple[str, str, int, int]]:
        """(date, description, amount, running_total) per posting to account or a sub-account."""
        raise NotImplementedError
