"""Reports over a journal (SPEC.md section 7)."""

from ledger.journal import Journal
from ledger.money import format_amount


def trial_balance(journal: Journal, until: str | None = None) -> list[tuple[str, int]]:
    """(account, balance) for each account with a non-zero balance, sorted."""
    return [(name, amount) for name, amount in sorted(journal.balances(until).items()) if amount]


def net_income(journal: Journal, until: str | None = None) -> int:
    """Income minus expenses; positive means profit."""
    return -(journal.balance("Income", until) + journal.balance("Expenses", until))


def balance_sheet(journal: Journal, until: str | None = None) -> dict[str, int]:
    """{"Assets": ..., "Liabilities": ..., "Equity": ...}."""
    return {
        "Assets": journal.balance("Assets", until),
        "Liabilities": -journal.balance("Liabilities", until),
        "Equity": -journal.balance("Equity", until) + net_income(journal, until),
    }


def format_trial_balance(journal: Journal, until: str | None = None) -> str:
    """The trial balance as text, with a Total line."""
    rows = trial_balance(journal, until)
    lines = [f"{name:<30}{format_amount(amount):>12}" for name, amount in rows]
    total = sum(amount for _, amount in rows if amount > 0)
    lines.append("-" * 42)
    lines.append(f"{'Total':<30}{format_amount(total):>12}")
    return "\n".join(lines)
