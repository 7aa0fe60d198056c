"""Account names and the chart of open accounts (SPEC.md section 3)."""

import re

from ledger.errors import AccountError

KINDS = ("Assets", "Liabilities", "Equity", "Income", "Expenses")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def account_kind(name: str) -> str:
    """The first segment of a valid account name; AccountError if the name is invalid."""
    segments = name.split(":")
    if not all(_SEGMENT.fullmatch(s) for s in segments) or segments[0] not in KINDS:
        raise AccountError(f"invalid account name: {name!r}")
    return segments[0]


def is_debit_normal(name: str) -> bool:
    """True for Assets and Expenses accounts."""
    return account_kind(name) in ("Assets", "Expenses")


class Chart:
    """The set of open accounts."""

    def __init__(self) -> None:
        self._open: set[str] = set()

    def open(self, name: str) -> None:
        """Open an account; AccountError if invalid or already open."""
        account_kind(name)
        if name in self._open:
            raise AccountError(f"account already open: {name}")
        self._open.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._open

    def names(self) -> list[str]:
        """The open accounts, sorted."""
        return sorted(self._open)

    def under(self, prefix: str) -> list[str]:
        """Sorted open accounts equal to prefix or starting with prefix + ":"."""
        return [n for n in self.names() if n == prefix or n.startswith(prefix + ":")]
