"""The journal: transactions over a chart of accounts (SPEC.md section 5)."""

from collections.abc import Iterator

from ledger.accounts import Chart
from ledger.errors import AccountError
from ledger.transaction import Posting, Transaction


def _within(name: str, account: str) -> bool:
    return name == account or name.startswith(account + ":")


class Journal:
    def __init__(self, chart: Chart | None = None) -> None:
        self.chart = chart if chart is not None else Chart()
        self._txns: list[Transaction] = []

    def add(self, txn: Transaction) -> None:
        """Add a transaction whose accounts are all open; AccountError otherwise."""
        for posting in txn.postings:
            if posting.account not in self.chart:
                raise AccountError(f"account not open: {posting.account}")
        self._txns.append(txn)

    def transactions(self) -> list[Transaction]:
        """A new list, sorted by date (stable)."""
        return sorted(self._txns, key=lambda t: t.date)

    def _postings(self, until: str | None) -> Iterator[tuple[Transaction, Posting]]:
        for txn in self.transactions():
            if until is None or txn.date <= until:
                for posting in txn.postings:
                    yield txn, posting

    def balance(self, account: str, until: str | None = None) -> int:
        """Sum posted to account and its sub-accounts, up to date `until`."""
        return sum(p.amount for _, p in self._postings(until) if _within(p.account, account))

    def balances(self, until: str | None = None) -> dict[str, int]:
        """Every open account to the sum posted to exactly it."""
        totals = dict.fromkeys(self.chart.names(), 0)
        for _, p in self._postings(until):
            totals[p.account] += p.amount
        return totals

    def register(self, account: str) -> list[tuple[str, str, int, int]]:
        """(date, description, amount, running_total) per posting to account or a sub-account."""
        rows, running = [], 0
        for txn, p in self._postings(None):
            if _within(p.account, account):
                running += p.amount
                rows.append((txn.date, txn.description, p.amount, running))
        return rows
