"""Chaos: the seeded fault plan and its profiles."""
