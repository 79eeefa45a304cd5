"""Thin ctypes bindings for the Linux calls the standard library lacks.

Each wrapper raises OSError with the real errno, so callers see exactly what the kernel said.
Only x86_64 and aarch64 syscall numbers are listed: those are the architectures we run on.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_SYSCALL_NUMBERS = {
    "x86_64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
    "aarch64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
}
_NR = _SYSCALL_NUMBERS[os.uname().machine]

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

# Mount flags (linux/mount.h), for the plans the launcher carries out.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

PR_SET_CHILD_SUBREAPER = 36


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")


def open_tree(path: str, flags: int) -> int:
    """A detached copy of the mount at `path`, as an fd that move_mount can attach elsewhere."""
    return _check(
        _libc.syscall(_NR["open_tree"], ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags)), f"open_tree {path}"
    )


def move_mount(from_fd: int, to_path: str) -> None:
    _check(
        _libc.syscall(
            _NR["move_mount"],
            ctypes.c_int(from_fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            _b(to_path),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount {to_path}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(fd: int, attr_set: int) -> None:
    """Set attributes (read-only, nosuid, ...) on a whole detached tree at once."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    _check(
        _libc.syscall(
            _NR["mount_setattr"],
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )
