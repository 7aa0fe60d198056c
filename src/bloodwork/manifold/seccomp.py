"""The sandbox's seccomp filter (a classic BPF program for `bwrap --seccomp FD`), built without libseccomp.

It refuses what the sandbox must never do and its mounts and user cannot forbid on their own:

- `ptrace`, `process_vm_readv`, `process_vm_writev` (EPERM): no command may stop, trace or read another
  process, the command server included (gdb and strace are installed);
- setuid/setgid bits (EPERM): `chmod`, `fchmod`, `fchmodat`, `fchmodat2` with mode & 06000, and the calls
  that create files or directories (`open`/`openat` with O_CREAT or O_TMPFILE, `creat`, `mkdir*`,
  `mknod*`) with those bits in their mode, so no setuid or setgid file is ever made in the workspace;
- `openat2` and `io_uring_setup` (ENOSYS): their arguments cannot be checked here (a struct, a ring), and
  callers fall back to the calls above;
- every syscall of a foreign ABI (32-bit i386 or x32 on x86_64: ENOSYS), where the numbers differ.

Only x86_64 and aarch64 are known; elsewhere `program()` returns None and the sandbox runs without the
filter (the manifest says so).
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# BPF opcodes (linux/filter.h, linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
_LD_ABS_W = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_X32_BIT = 0x40000000
_SETID = 0o6000
_CREATES = os.O_CREAT | 0o20000000  # O_CREAT, or __O_TMPFILE (the bit that O_TMPFILE always carries)

# (audit arch, syscall numbers); None where the ABI has no such call.
_ARCHES: dict[str, tuple[int, dict[str, int | None]]] = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "chmod": 90, "fchmod": 91,
        "fchmodat": 268, "fchmodat2": 452, "open": 2, "openat": 257, "creat": 85, "mkdir": 83, "mkdirat": 258,
        "mknod": 133, "mknodat": 259, "openat2": 437, "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "chmod": None, "fchmod": 52,
        "fchmodat": 53, "fchmodat2": 452, "open": None, "openat": 56, "creat": None, "mkdir": None,
        "mkdirat": 34, "mknod": None, "mknodat": 33, "openat2": 437, "io_uring_setup": 425}),
}
# Which argument holds the mode, and (for the open family) which holds the flags.
_MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "creat": 1, "mkdir": 1, "mkdirat": 2,
             "mknod": 1, "mknodat": 2}
_OPEN_ARGS = {"open": (1, 2), "openat": (2, 3)}
_DENY = {"ptrace": errno.EPERM, "process_vm_readv": errno.EPERM, "process_vm_writev": errno.EPERM,
         "openat2": errno.ENOSYS, "io_uring_setup": errno.ENOSYS}

DESCRIPTION = ("seccomp: ptrace and process_vm_readv/writev refused; chmod/creat/open/mkdir/mknod with "
               "setuid or setgid bits refused; openat2 and io_uring off; foreign ABIs off")


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument `index` in `struct seccomp_data` (little-endian)."""
    return 16 + 8 * index


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture, or None where its syscall numbers are not known."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None or struct.pack("=H", 1) != b"\x01\x00":
        return None
    audit, numbers = arch
    ret_allow = _ins(_RET_K, _ALLOW)
    out = [_ins(_LD_ABS_W, 4), _ins(_JEQ_K, audit, 1, 0), _ins(_RET_K, _ERRNO | errno.ENOSYS), _ins(_LD_ABS_W, 0)]
    if audit == _ARCHES["x86_64"][0]:
        out += [_ins(_JGE_K, _X32_BIT, 0, 1), _ins(_RET_K, _ERRNO | errno.ENOSYS)]
    for name, nr in numbers.items():
        if nr is None:
            continue
        if name in _DENY:
            out += [_ins(_JEQ_K, nr, 0, 1), _ins(_RET_K, _ERRNO | _DENY[name])]
        elif name in _OPEN_ARGS:
            flags, mode = _OPEN_ARGS[name]
            out += [_ins(_JEQ_K, nr, 0, 6), _ins(_LD_ABS_W, _arg_low(flags)), _ins(_JSET_K, _CREATES, 0, 3),
                    _ins(_LD_ABS_W, _arg_low(mode)), _ins(_JSET_K, _SETID, 0, 1),
                    _ins(_RET_K, _ERRNO | errno.EPERM), ret_allow]
        else:
            out += [_ins(_JEQ_K, nr, 0, 4), _ins(_LD_ABS_W, _arg_low(_MODE_ARG[name])), _ins(_JSET_K, _SETID, 0, 1),
                    _ins(_RET_K, _ERRNO | errno.EPERM), ret_allow]
    out.append(ret_allow)
    return b"".join(out)


def program_fd() -> int | None:
    """A memfd holding the filter, positioned at 0, for `bwrap --seccomp FD` (the caller closes it)."""
    prog = program()
    if prog is None:
        return None
    fd = os.memfd_create("bloodwork-seccomp")
    os.write(fd, prog)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
