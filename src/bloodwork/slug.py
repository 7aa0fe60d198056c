"""One way to turn a task id, a model spec or a chaos entry into a piece of a file name."""

from __future__ import annotations

import hashlib
import re


def slug(text: str, limit: int = 60, *, keep: str = "", digest: bool = False) -> str:
    """Each run of characters other than ASCII letters, digits and `keep` becomes one '-', none at either end;
    cut to `limit` characters. With `digest`, a cut name ends in 8 hex digits of the whole text's sha256
    instead, so two long names that share their start still name two files (sweep run ids need that)."""
    name = re.sub(rf"[^A-Za-z0-9{re.escape(keep)}]+", "-", text).strip("-")
    if len(name) <= limit:
        return name
    if digest:
        return name[: limit - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name[:limit]
