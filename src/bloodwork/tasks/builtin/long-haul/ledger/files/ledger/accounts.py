"""Account names and the chart of open accounts (SPEC.md section 3)."""

from ledger.errors import AccountError  # noqa: F401

KINDS = ("Assets", "Liabilities", "Equity", "Income", "Expenses")


def account_kind(name: str) -> str:
    """The first segment of a valid account name; AccountError if the name is invalid."""
    raise NotImplementedError


def is_debit_normal(name: str) -> bool:
    """True for Assets and Expenses accounts."""
    raise NotImplementedError


class Chart:
    """The set of open accounts."""

    def open(self, name: str) -> None:
        """Open an account; AccountError if invalid or already open."""
        raise NotImplementedError

    def __contains__(self, name: object) -> bool:
        raise NotImplementedError

    def names(self) -> list[str]:
        """The open accounts, sorted."""
        raise NotImplementedError

    def under(self, prefix: str) -> list[str]:
        """Sorted open accounts equal to prefix or starting with prefix + ":"."""
        raise NotImplementedError
