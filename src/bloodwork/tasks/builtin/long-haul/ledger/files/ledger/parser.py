"""The text format of a ledger (SPEC.md section 6)."""

from ledger.errors import LedgerError, ParseError  # noqa: F401
from ledger.journal import Journal


def parse_ledger(text: str) -> Journal:
    """Parse a ledger text into a Journal; ParseError (with line_no) on any problem."""
    raise NotImplementedError
