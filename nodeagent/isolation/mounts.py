"""The sandbox's filesystem: a read-only image root, RAM-backed writable places, a minimal
/dev, a masked /proc, and nothing else of the host.

Runs as root of the sandbox's user namespace, inside its fresh mount namespace, in the
process that becomes pid 1 of its pid namespace (so /proc shows only the sandbox).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from ..images import MOUNT_POINTS
from . import syscalls as sc
from .spec import HOME, SANDBOX_GID, SANDBOX_UID, SandboxSpec

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
DATA_DIR = "/data"

_STATVFS_TO_MS = (
    (os.ST_NOSUID, sc.MS_NOSUID),
    (os.ST_NODEV, sc.MS_NODEV),
    (os.ST_NOEXEC, sc.MS_NOEXEC),
    (os.ST_NOATIME, sc.MS_NOATIME),
    (os.ST_NODIRATIME, sc.MS_NODIRATIME),
    (os.ST_RELATIME, sc.MS_RELATIME),
)


def _locked_flags(path: str) -> int:
    """Flags a remount inside a user namespace must keep, or the kernel refuses it."""
    current = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS if current & st)


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def bind_read_only(source: str, target: str) -> None:
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
    sc.mount(None, target, None, flags | _locked_flags(target))


def _tmpfs(target: str, size: int, mode: int, owner: tuple[int, int] = (0, 0), flags: int = 0) -> None:
    options = f"size={size},mode={mode:o},uid={owner[0]},gid={owner[1]}"
    sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | flags, options)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _populate_tmpfs_root(root: str, spec: SandboxSpec) -> None:
    for point in MOUNT_POINTS:
        os.makedirs(_inside(root, point), mode=0o755, exist_ok=True)
    for _host, inside in spec.image.binds:
        os.makedirs(_inside(root, inside), mode=0o755, exist_ok=True)
    for link, target in spec.image.symlinks:
        path = _inside(root, link)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.symlink(target, path)
    for name, content in spec.image.etc_files.items():
        path = _inside(root, PurePosixPath("/etc", name).as_posix())
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)
        os.chmod(path, 0o644)


def _make_root(root: str, spec: SandboxSpec) -> None:
    if spec.image.rootfs:
        sc.mount(spec.image.rootfs, root, None, sc.MS_BIND | sc.MS_REC)
    else:
        _tmpfs(root, 4 * 1024 * 1024, 0o755)
        _populate_tmpfs_root(root, spec)
    for host, inside in spec.image.binds:
        bind_read_only(host, _inside(root, inside))


def _make_dev(root: str, spec: SandboxSpec) -> None:
    dev = _inside(root, "/dev")
    _tmpfs(dev, 1024 * 1024, 0o755, flags=sc.MS_NOEXEC)
    for name in DEVICES:
        node = os.path.join(dev, name)
        _touch(node)
        sc.mount(f"/dev/{name}", node, None, sc.MS_BIND)
    for sub in ("pts", "shm"):
        os.mkdir(os.path.join(dev, sub), 0o755)
    sc.mount("devpts", os.path.join(dev, "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=620")
    _tmpfs(os.path.join(dev, "shm"), spec.shm_bytes, 0o1777, flags=sc.MS_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    sc.mount(None, dev, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             "size=1048576,mode=755")


def _make_proc(root: str) -> None:
    """Mounted before pivot_root: the kernel only allows a new procfs in a user namespace
    while a fully visible one exists in the mount namespace."""
    proc = _inside(root, "/proc")
    sc.mount("proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for name in PROC_MASKED_FILES:
        path = os.path.join(proc, name)
        if os.path.exists(path):
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    for name in PROC_MASKED_DIRS:
        path = os.path.join(proc, name)
        if os.path.isdir(path):
            _tmpfs(path, 4096, 0o555, flags=sc.MS_RDONLY)
    for name in PROC_READ_ONLY:
        path = os.path.join(proc, name)
        if os.path.isdir(path):
            bind_read_only(path, path)


def _seal_root(root: str, spec: SandboxSpec) -> None:
    if spec.image.rootfs:
        flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
        sc.mount(None, root, None, flags | _locked_flags(root))
    else:
        sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV, "mode=755")


def _pivot(root: str) -> None:
    """pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def build_root(spec: SandboxSpec) -> None:
    """Assemble the sandbox filesystem under the stage directory and make it the root."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = spec.stage_dir
    _make_root(root, spec)
    _tmpfs(_inside(root, "/tmp"), spec.tmp_bytes, 0o1777)
    _tmpfs(_inside(root, HOME), spec.home_bytes, 0o755, owner=(SANDBOX_UID, SANDBOX_GID))
    _tmpfs(_inside(root, DATA_DIR), 1024 * 1024, 0o755)
    _make_dev(root, spec)
    _make_proc(root)
    _seal_root(root, spec)
    _pivot(root)
