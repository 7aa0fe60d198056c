"""Errors raised by the ledger package (SPEC.md section 1). This module is complete."""


class LedgerError(Exception):
    """Base class of every ledger error."""


class AmountError(LedgerError):
    """A text is not a valid amount."""


class AccountError(LedgerError):
    """An account name is invalid, or an account is unknown or already open."""


class UnbalancedError(LedgerError):
    """A transaction does not balance (or has too few postings)."""


class ParseError(LedgerError):
    """A ledger text is malformed; `line_no` counts from 1."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no
