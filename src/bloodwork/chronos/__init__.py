"""Chronos: what happened, durably and verifiably (journal, traces, context store, manifest)."""
