"""Run-directory files other than the journal: atomic writes, JSONL appenders, the context store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bloodwork.chronos.journal import canonical_json


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes | str, *, sync_dir: bool = True) -> None:
    """Write temp, fsync, rename (and fsync the directory): the file is old or new, never torn.

    `sync_dir=False` skips the directory fsync for a file replaced every tick: the rename may then be
    lost to a power cut (never to a killed process), which a resume handles like an uncommitted tick.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not sync_dir:
        return
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class JsonlAppender:
    """An append-only JSON-lines file whose size is the commit offset recorded in the registers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the run

    def append(self, record: dict[str, Any] | BaseModel) -> int:
        line = record.model_dump() if isinstance(record, BaseModel) else record
        self._fh.write((canonical_json(line) + "\n").encode("utf-8"))
        return self._fh.tell()

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: a torn last line is skipped."""
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                out.append(json.loads(raw))
    return out


def blob_id(text: str) -> str:
    # surrogatepass: a model's lone surrogate has no UTF-8 form; other text hashes as its UTF-8 bytes
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


class BlobStore:
    """Content-addressed text store (`context/blobs.jsonl`): a repeated section is written once.

    This is what keeps the exact per-tick context affordable: the system prompt and the goal are
    stored once per run, each history entry once, however many ticks show them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: set[str] = set()
        self._texts: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        for rec in read_jsonl(path):
            self._known.add(rec["id"])
        self._out = JsonlAppender(path)

    def put(self, text: str) -> str:
        bid = self._ids.get(text)  # a str caches its hash: a repeated section costs one dict lookup
        if bid is not None:
            return bid
        bid = blob_id(text)
        if bid not in self._known:
            self._out.append({"id": bid, "text": text})
            self._known.add(bid)
        if len(self._ids) > 4096:
            self._ids.clear()
            self._texts.clear()
        self._ids[text] = bid
        self._texts[bid] = text
        return bid

    def get(self, bid: str) -> str:
        if bid not in self._texts:
            self._texts.update(load_blobs(self.path))
        return self._texts[bid]

    def close(self) -> None:
        self._out.close()


def load_blobs(path: Path) -> dict[str, str]:
    return {rec["id"]: rec["text"] for rec in read_jsonl(path)}
