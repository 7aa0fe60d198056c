"""The text format of a ledger (SPEC.md section 6)."""

import re

from ledger.errors import LedgerError, ParseError
from ledger.journal import Journal
from ledger.money import parse_amount
from ledger.transaction import make_transaction

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_ledger(text: str) -> Journal:
    """Parse a ledger text into a Journal; ParseError (with line_no) on any problem."""
    journal = Journal()
    current = None  # [header line_no, date, description, postings] of the open transaction

    def flush() -> None:
        if current is not None:
            line_no, date, description, postings = current
            try:
                journal.add(make_transaction(date, description, postings))
            except LedgerError as err:
                raise ParseError(line_no, str(err)) from err

    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        fields = stripped.split()
        try:
            if line[0] in " \t":
                if current is None:
                    raise ParseError(line_no, "posting outside a transaction")
                if len(fields) > 2:
                    raise ParseError(line_no, "too many fields in a posting")
                amount = parse_amount(fields[1]) if len(fields) == 2 else None
                current[3].append((fields[0], amount))
                continue
            flush()
            current = None
            if fields[0] == "open" and len(fields) == 2:
                journal.chart.open(fields[1])
            elif _DATE.fullmatch(fields[0]):
                current = [line_no, fields[0], stripped[len(fields[0]):].strip(), []]
            else:
                raise ParseError(line_no, f"unknown line: {stripped}")
        except ParseError:
            raise
        except LedgerError as err:
            raise ParseError(line_no, str(err)) from err
    flush()
    return journal
