"""Reports over a journal (SPEC.md section 7)."""

from ledger.journal import Journal
from ledger.money import format_amount  # noqa: F401


def trial_balance(journal: Journal, until: str | None = None) -> list[tuple[str, int]]:
    """(account, balance) for each account with a non-zero balance, sorted."""
    raise NotImplementedError


def net_income(journal: Journal, until: str | None = None) -> int:
    """Income minus expenses; positive means profit."""
    raise NotImplementedError


def balance_sheet(journal: Journal, until: str | None = None) -> dict[str, int]:
    """{"Assets": ..., "Liabilities": ..., "Equity": ...}."""
    raise NotImplementedError


def format_trial_balance(journal: Journal, until: str | None = None) -> str:
    """The trial balance as text, with a Total line."""
    raise NotImplementedError
