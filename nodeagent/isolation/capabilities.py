"""Capabilities: the sandboxed code holds none, in any of the five sets."""

from __future__ import annotations

from pathlib import Path

from . import syscalls

# Read once at import, while the host /proc is still visible.
LAST_CAP = int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop_bounding_set() -> None:
    """Remove every capability from the bounding set, so no later exec can regain one.

    Needs CAP_SETPCAP, so it runs while the process is still root in its user namespace.
    """
    for cap in range(LAST_CAP + 1):
        syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)


def clear_sets() -> None:
    """Empty the ambient, effective, permitted and inheritable sets."""
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    syscalls.capset_clear()


def drop_all() -> None:
    """Empty all five sets."""
    drop_bounding_set()
    clear_sets()
