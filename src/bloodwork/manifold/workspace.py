"""File operations confined to the run's workspace.

Paths are resolved (symlinks followed) and must stay under the workspace root; every component is
then opened with `O_NOFOLLOW` relative to the root's descriptor, so a symlink swapped in between the
check and the open cannot lead outside either. Only regular files are read or written: a FIFO, socket or
device the agent made is refused (opened non-blocking, so it cannot hang the kernel either). What the
kernel creates belongs to the owner of the directory it is created in, so the sandbox's unprivileged
user (who owns the workspace) can change it afterwards.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

PAGE_CHARS = 3000


class WorkspaceError(Exception):
    """Base of the errors a file op turns into a trap."""


class PathEscape(WorkspaceError):
    """The path leaves the workspace (absolute, `..`, a symlink out)."""


class PageFault(WorkspaceError):
    """The path does not exist (or is not a regular file)."""


class IOFault(WorkspaceError):
    """A write failed; `errno` says how."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


class _NotRegular(OSError):
    """The path names a FIFO, socket, device or directory: what, is the message."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def copy_plain_tree(src: Path, dst: Path, *, skip_names: tuple[str, ...] = ()) -> list[str]:
    """Copy a workspace: directories, regular files and symlinks (as links); FIFOs, sockets and devices the
    agent made are left out (`shutil.copytree` blocks on or fails at them). Returns what was left out,
    relative to `src`. Entries named in `skip_names` are left out too, and not reported."""
    left_out: list[str] = []

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = set()
        for name in names:
            if name in skip_names:
                skip.add(name)
                continue
            try:
                mode = os.lstat(os.path.join(folder, name)).st_mode
            except OSError:  # gone meanwhile
                skip.add(name)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                skip.add(name)
                left_out.append(os.path.relpath(os.path.join(folder, name), src))
        return skip

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
    return sorted(left_out)


def _inherit_owner(name: str, dir_fd: int) -> None:
    """As root, give a new entry the owner of its directory (the sandbox user owns the workspace)."""
    if os.geteuid() != 0:
        return
    parent = os.fstat(dir_fd)
    if parent.st_uid != 0 or parent.st_gid != 0:
        os.chown(name, parent.st_uid, parent.st_gid, dir_fd=dir_fd, follow_symlinks=False)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _relative(self, rel: str) -> list[str]:
        if "\x00" in rel:
            raise PathEscape("path contains a NUL byte")
        if rel.startswith(("/", "~")) or "://" in rel:
            raise PathEscape(f"{rel!r} is not a path inside the workspace")
        target = Path(os.path.normpath(self.root / rel))
        if target != self.root and self.root not in target.parents:
            raise PathEscape(f"{rel!r} leaves the workspace")
        resolved = target.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise PathEscape(f"{rel!r} resolves outside the workspace")
        parts = list(resolved.relative_to(self.root).parts)
        if not parts:
            raise PageFault(f"{rel!r} is the workspace itself, not a file")
        return parts

    def _open(self, parts: list[str], flags: int, *, make_dirs: bool = False) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not make_dirs:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    _inherit_owner(part, fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
            name = parts[-1]
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise _NotRegular(_kind(st.st_mode))
            # O_NONBLOCK: a FIFO swapped in after the check must not block the open (nor the kernel).
            out = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=fd)
            mode = os.fstat(out).st_mode
            if not stat.S_ISREG(mode):
                os.close(out)
                raise _NotRegular(_kind(mode))
            if st is None and flags & os.O_CREAT:
                _inherit_owner(name, fd)
            return out
        finally:
            os.close(fd)

    def read_text(self, rel: str) -> str:
        parts = self._relative(rel)
        try:
            fd = self._open(parts, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise PageFault(f"{rel}: no such file") from err
        except IsADirectoryError as err:
            raise PageFault(f"{rel}: is a directory") from err
        except _NotRegular as err:
            raise PageFault(f"{rel}: not a regular file ({err})") from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise PathEscape(f"{rel}: symlink refused") from err
            raise PageFault(f"{rel}: {os.strerror(err.errno or 0)}") from err
        with os.fdopen(fd, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace")

    def exists(self, rel: str) -> bool:
        try:
            self.read_text(rel)
        except WorkspaceError:
            return False
        return True

    def write_text(self, rel: str, content: str, *, fail_after: int | None = None,
                   fail_errno: int = errno.EACCES) -> bool:
        """Write a whole file; return whether its content changed.

        `fail_after` (chaos) writes that many bytes for real, then fails with `fail_errno`.
        """
        parts = self._relative(rel)
        data = content.encode("utf-8")
        try:
            before = self.read_text(rel).encode("utf-8")
        except PageFault:
            before = None
        try:
            fd = self._open(parts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, make_dirs=True)
        except _NotRegular as err:
            raise IOFault(f"{rel}: not a regular file ({err}): refused", errno.EINVAL) from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise PathEscape(f"{rel}: symlink refused") from err
            raise IOFault(f"{rel}: {os.strerror(err.errno or 0)}", err.errno or errno.EIO) from err
        try:
            if fail_after is not None:
                os.write(fd, data[:fail_after])
                raise IOFault(f"{rel}: {os.strerror(fail_errno)}", fail_errno)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as err:
            raise IOFault(f"{rel}: {os.strerror(err.errno or 0)}", err.errno or errno.EIO) from err
        finally:
            os.close(fd)
        return before != data


def page_of(text: str, page: int, size: int = PAGE_CHARS) -> tuple[str, int]:
    """One page of a long text and the page count."""
    pages = max(1, -(-len(text) // size))
    return text[page * size:(page + 1) * size], pages
