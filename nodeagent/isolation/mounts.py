"""The sandbox's filesystem: a read-only image root, RAM-backed writable places, a minimal
/dev, a masked /proc, and nothing else of the host.

This module plans; the launcher's pid 1 carries the plan out as root of the sandbox's user
namespace, inside its fresh mount namespace (so the new /proc shows only the sandbox).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from ..images import MOUNT_POINTS
from . import syscalls as sc
from .layout import DATA_DIR, HOME, SANDBOX_GID, SANDBOX_UID
from .spec import SandboxSpec

if TYPE_CHECKING:
    from .plan import Plan

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
# What Docker and gVisor hide: kernel memory, keyrings, timers and debug state of the host.
PROC_MASKED_FILES = (
    "kcore", "keys", "key-users", "timer_list", "timer_stats", "sched_debug", "latency_stats",
    "interrupts", "sysrq-trigger", "kallsyms", "kmsg", "config.gz", "modules", "vmallocinfo",
    "slabinfo", "pagetypeinfo", "zoneinfo", "buddyinfo", "iomem", "ioports", "mtrr",
)
PROC_MASKED_DIRS = ("acpi", "asound", "scsi", "firmware", "driver")
PROC_READ_ONLY = ("sys", "bus", "fs", "irq")


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _bind_read_only(plan: Plan, source: str, target: str) -> None:
    plan.add("mount", source, target, "", sc.MS_BIND | sc.MS_REC, "")
    plan.add("remount_ro", target)  # keeps the flags a user namespace may not drop


def _tmpfs(plan: Plan, target: str, size: int, mode: int, owner: tuple[int, int] = (0, 0), flags: int = 0) -> None:
    options = f"size={size},mode={mode:o},uid={owner[0]},gid={owner[1]}"
    plan.add("mount", "tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | flags, options)


def _populate_tmpfs_root(plan: Plan, root: str, spec: SandboxSpec) -> None:
    for point in MOUNT_POINTS:
        plan.add("mkdirs", _inside(root, point), 0o755)
    for _host, inside in spec.image.binds:
        plan.add("mkdirs", _inside(root, inside), 0o755)
    for link, target in spec.image.symlinks:
        plan.add("symlink", target, _inside(root, link))
    for name, content in spec.image.etc_files.items():
        plan.add("file", _inside(root, PurePosixPath("/etc", name).as_posix()), 0o644, content)


def _make_root(plan: Plan, root: str, spec: SandboxSpec) -> None:
    if spec.image.rootfs:
        plan.add("mount", spec.image.rootfs, root, "", sc.MS_BIND | sc.MS_REC, "")
    else:
        _tmpfs(plan, root, 4 * 1024 * 1024, 0o755)
        _populate_tmpfs_root(plan, root, spec)
    for host, inside in spec.image.binds:
        _bind_read_only(plan, host, _inside(root, inside))


def _make_dev(plan: Plan, root: str, spec: SandboxSpec) -> None:
    dev = _inside(root, "/dev")
    _tmpfs(plan, dev, 1024 * 1024, 0o755, flags=sc.MS_NOEXEC)
    for name in DEVICES:
        node = os.path.join(dev, name)
        plan.add("file", node, 0o644, b"")
        plan.add("mount", f"/dev/{name}", node, "", sc.MS_BIND, "")
    for sub in ("pts", "shm"):
        plan.add("mkdir", os.path.join(dev, sub), 0o755)
    plan.add("mount", "devpts", os.path.join(dev, "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=620")
    _tmpfs(plan, os.path.join(dev, "shm"), spec.shm_bytes, 0o1777, flags=sc.MS_NOEXEC)
    for name, target in DEV_LINKS:
        plan.add("symlink", target, os.path.join(dev, name))
    plan.add("mount", "", dev, "", sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             "size=1048576,mode=755")


def _make_proc(plan: Plan, root: str) -> None:
    """Mounted before pivot_root: the kernel only allows a new procfs in a user namespace
    while a fully visible one exists in the mount namespace. What the host kernel lacks
    (`when` skips it) needs no mask."""
    proc = _inside(root, "/proc")
    plan.add("mount", "proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "")
    for name in PROC_MASKED_FILES:
        path = os.path.join(proc, name)
        plan.add("when", "exists", path, 1)
        plan.add("mount", "/dev/null", path, "", sc.MS_BIND, "")
    for name in PROC_MASKED_DIRS:
        path = os.path.join(proc, name)
        plan.add("when", "dir", path, 1)
        _tmpfs(plan, path, 4096, 0o555, flags=sc.MS_RDONLY)
    for name in PROC_READ_ONLY:
        path = os.path.join(proc, name)
        plan.add("when", "dir", path, 2)
        _bind_read_only(plan, path, path)


def _seal_root(plan: Plan, root: str, spec: SandboxSpec) -> None:
    if spec.image.rootfs:
        plan.add("remount_ro", root)
    else:
        plan.add("mount", "", root, "", sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV, "mode=755")


def build_root(plan: Plan, spec: SandboxSpec) -> None:
    """Assemble the sandbox filesystem under the stage directory and make it the root:
    pivot_root(".", ".") stacks the old root on the new one, and detaching it leaves ours."""
    plan.add("mount", "", "/", "", sc.MS_REC | sc.MS_PRIVATE, "")
    root = spec.stage_dir
    _make_root(plan, root, spec)
    _tmpfs(plan, _inside(root, "/tmp"), spec.tmp_bytes, 0o1777)
    _tmpfs(plan, _inside(root, HOME), spec.home_bytes, 0o755, owner=(SANDBOX_UID, SANDBOX_GID))
    _tmpfs(plan, _inside(root, DATA_DIR), 1024 * 1024, 0o755)
    _make_dev(plan, root, spec)
    _make_proc(plan, root)
    _seal_root(plan, root, spec)
    plan.add("pivot_root", root)
