"""A content digest of the workspace, kept up to date incrementally: the loop detectors' "world state".

The loop detectors ask, every tick, whether the workspace is what it was: the same op on an unchanged
workspace is a repeat, the same test run after an edit is progress. Walking the tree for that (as a
(path, size, mtime) snapshot did, twice per command) costs time proportional to the workspace; here
the index is kept up to date from what changed:

- `inotify` (Linux): one watch per directory. The kernel's own writes and whatever a sandboxed command
  did (a bind mount is the same inode) queue events; `digest()` drains them, re-hashes only the paths
  they name and rescans only directories that appeared. A queue overflow or a moved directory falls back
  to one full rescan. Idle, a tick costs one `read` that returns EAGAIN.
- `scan` (no inotify, or no instance left: they are a per-user limit): a walk that re-hashes only files
  whose stat changed, as git does.

The digest covers content, not timestamps: a path's entry is (relative path, kind, permission bits,
sha256 of the content or the link target), and the digest is the XOR of the entries' hashes, so a file
written back to earlier content gives the earlier digest (an A-B-A-B oscillation between two world states
is visible as such), a rebuilt or resumed run gets the same digests, and one changed file costs one
hash. `.git`, `__pycache__` and `.pytest_cache` are left out: running the tests or `git status` there is
not a change of the agent's work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import struct
import weakref
from pathlib import Path
from typing import Literal

IGNORED_DIRS = frozenset({".git", "__pycache__", ".pytest_cache"})
HASH_LIMIT = 64 * 1024 * 1024  # bigger files are keyed by size and mtime (rare; not replay-stable)

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ONLYDIR, _IN_DONT_FOLLOW, _IN_ISDIR = 0x4000, 0x8000, 0x1000000, 0x2000000, 0x40000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
         | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR | _IN_DONT_FOLLOW)
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1, lib.inotify_add_watch, lib.inotify_rm_watch  # noqa: B018 - present on Linux only
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()


def _entry(rel: str, st: os.stat_result, full: str) -> int:
    """The entry's hash as an int; None-like 0 is never returned for a real entry (sha256 is not 0)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        body = b"L" + os.readlink(full).encode("utf-8", "surrogateescape")
    elif stat.S_ISREG(st.st_mode):
        if st.st_size > HASH_LIMIT:
            body = b"B%d:%d" % (st.st_size, st.st_mtime_ns)
        else:
            h = hashlib.sha256()
            with open(full, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            body = b"F" + h.digest()
    else:
        body = b"O%d" % stat.S_IFMT(st.st_mode)
    key = rel.encode("utf-8", "surrogateescape") + b"\0" + b"%o" % mode + b"\0" + body
    return int.from_bytes(hashlib.sha256(key).digest()[:16], "big")


class WorldIndex:
    """`digest()` is the workspace's content digest now; `kind` says how the index keeps up."""

    def __init__(self, root: Path, *, use_inotify: bool = True) -> None:
        self.root = str(Path(root).resolve())
        self._entries: dict[str, tuple[int, tuple[int, ...]]] = {}  # rel path -> (hash, stat key)
        self._xor = 0
        self._fd = -1
        self._wds: dict[int, str] = {}  # watch descriptor -> directory, relative ("" is the root)
        self._dirty: set[str] = set()
        self._resync = False
        if use_inotify and _LIBC is not None:
            fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                # inotify instances are a per-user limit: one left open by an index nobody closes is gone
                self._finalizer = weakref.finalize(self, os.close, fd)
        self.kind: Literal["inotify", "scan"] = "inotify" if self._fd >= 0 else "scan"
        self._rescan()

    # -- the digest ---------------------------------------------------------------------------------
    def digest(self) -> str:
        if self._fd < 0:
            self._rescan()
        else:
            self._drain()
            if self._resync:
                self._rescan()
            elif self._dirty:
                dirty, self._dirty = self._dirty, set()
                for rel in dirty:
                    self._update(rel, force=True)
        return f"{self._xor:032x}"

    def files(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._fd >= 0:
            self._finalizer()
            self._fd = -1

    # -- keeping the entries -------------------------------------------------------------------------
    def _set(self, rel: str, value: tuple[int, tuple[int, ...]] | None) -> None:
        old = self._entries.pop(rel, None)
        if old is not None:
            self._xor ^= old[0]
        if value is not None:
            self._entries[rel] = value
            self._xor ^= value[0]

    def _update(self, rel: str, st: os.stat_result | None = None, *, force: bool = False) -> None:
        """Re-key one path from disk; a path that vanished (or became a directory) leaves the index.

        Without `force` an unchanged stat (inode, size, mtime, ctime, mode) means unchanged content, as git
        assumes; an inotify event forces the hash (two same-size writes within one mtime tick look alike)."""
        full = os.path.join(self.root, rel)
        try:
            st = st or os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                self._set(rel, None)
                return
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
            old = self._entries.get(rel)
            if not force and old is not None and old[1] == key:
                return
            self._set(rel, (_entry(rel, st, full), key))
        except OSError:
            self._set(rel, None)

    def _rescan(self) -> None:
        """Walk the tree: re-hash what changed by stat, drop what is gone, and (inotify) watch every directory."""
        self._resync = False
        if self._fd >= 0:
            self._drain(discard=True)
        found: set[str] = set()
        self._walk("", found)
        for rel in [r for r in self._entries if r not in found]:
            self._set(rel, None)

    def _walk(self, top: str, found: set[str]) -> None:
        stack = [top]
        while stack:
            rel_dir = stack.pop()
            full_dir = os.path.join(self.root, rel_dir) if rel_dir else self.root
            if self._fd >= 0:
                self._watch(rel_dir, full_dir)
            try:
                entries = list(os.scandir(full_dir))
            except OSError:
                continue
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if entry.name not in IGNORED_DIRS:
                        stack.append(rel)
                    continue
                found.add(rel)
                self._update(rel, st)

    def _watch(self, rel_dir: str, full_dir: str) -> None:
        assert _LIBC is not None
        wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(full_dir), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:  # out of watches: this index can no longer see every change
                self.close()
                self.kind = "scan"
            return
        self._wds[wd] = rel_dir

    # -- inotify -------------------------------------------------------------------------------------
    def _drain(self, *, discard: bool = False) -> None:
        while self._fd >= 0:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                self.kind = "scan"
                self._resync = True
                return
            if not discard:
                self._events(buf)

    def _events(self, buf: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            name = buf[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0").decode(
                "utf-8", "surrogateescape")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                self._resync = True
                continue
            if mask & _IN_IGNORED:
                self._wds.pop(wd, None)
                continue
            parent = self._wds.get(wd)
            if parent is None:
                continue
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                if parent == "":
                    self._resync = True
                continue
            rel = f"{parent}/{name}" if parent else name
            if mask & _IN_ISDIR:
                if name in IGNORED_DIRS:
                    continue
                if mask & (_IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE):
                    # A directory moved or removed with its files: the simple, correct answer is one rescan.
                    self._resync = True
                elif mask & _IN_CREATE:
                    # Watch it first, then hash what is already inside: later writes queue events.
                    self._walk(rel, set())
                continue
            self._dirty.add(rel)
