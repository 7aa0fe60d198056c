"""ledger: a tiny double-entry bookkeeping library (see SPEC.md)."""
