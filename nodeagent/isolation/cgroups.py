"""cgroup limits per sandbox: memory without swap, CPU quota and a pids ceiling.

Current Kubernetes nodes have the unified v2 hierarchy; some hosts (this project's test
machines among them) still carry memory, cpu and pids on v1. The driver is picked by what the
host mounts, so one code path never guesses at the other's files.

Groups are slots, reused from sandbox to sandbox: moving the first process into a brand-new
memory cgroup costs the kernel 7-15 ms, moving one into a used one well under 1 ms. A slot is
handed out only once it is empty; its limits are rewritten and its OOM counter re-based.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
_CPU_PERIOD_US = 100_000


# What a finished sandbox leaves charged to its slot is mostly page cache of the image's
# files (the interpreter, its libraries), which the next sandbox reads again: reclaiming it
# every time would evict it for everyone and cost ~1 ms. Only a large leftover (files the
# code wrote and read) is reclaimed, so a slot never hands its next sandbox much less room.
_RECLAIM_ABOVE = 64 << 20


class CgroupError(Exception):
    """The host's cgroups cannot give a sandbox the limits it needs."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_cores: float
    pids_max: int


class Cgroup(Protocol):
    def add(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def oom_kills(self) -> int: ...
    def kill_all(self) -> None: ...
    def release(self) -> None: ...


class Driver(Protocol):
    version: int

    def prepare(self, slot: str, limits: Limits) -> Cgroup: ...
    def slot(self, slot: str) -> Cgroup: ...
    def remove_stale(self) -> None: ...
    def remove_all(self) -> None: ...


def _write(path: Path, value: str | int) -> None:
    path.write_text(str(value))


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def _rmdir(path: Path) -> None:
    """Remove a cgroup directory; the kernel may need a moment after its last task exits."""
    for _ in range(200):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.005)
    raise CgroupError(f"cgroup {path} stayed busy")


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except FileNotFoundError:
        pass
    return 0


class _V1Cgroup:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self._dirs = dirs
        self._oom_base = self._oom_counter()

    def _oom_counter(self) -> int:
        return _counter(self._dirs["memory"] / "memory.oom_control", "oom_kill")

    def add(self, pid: int) -> None:
        for directory in self._dirs.values():
            _write(directory / "cgroup.procs", pid)

    def pids(self) -> list[int]:
        return _read_pids(self._dirs["pids"] / "cgroup.procs")

    def oom_kills(self) -> int:
        return self._oom_counter() - self._oom_base

    def kill_all(self) -> None:
        """Freeze, kill, thaw: a frozen group cannot fork new members while we kill."""
        state = self._dirs["freezer"] / "freezer.state"
        _write(state, "FROZEN")
        try:
            for _ in range(400):
                if state.read_text().strip() == "FROZEN":
                    break
                time.sleep(0.0025)
            kill_pids(self.pids())
        finally:
            _write(state, "THAWED")

    def release(self) -> None:
        """Drop what the last sandbox left charged, when it is much (see _RECLAIM_ABOVE)."""
        memory = self._dirs["memory"]
        if int((memory / "memory.usage_in_bytes").read_text()) <= _RECLAIM_ABOVE:
            return
        try:
            _write(memory / "memory.force_empty", 0)
        except OSError:
            pass  # busy or unsupported: the kernel reclaims it under pressure anyway


class V1Driver:
    """Legacy hierarchy: one directory tree per controller."""

    version = 1
    controllers = ("memory", "pids", "cpu", "freezer")

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self._parents = {c: root / c / parent for c in self.controllers}
        for controller, directory in self._parents.items():
            if not (root / controller).is_dir():
                raise CgroupError(f"cgroup v1 controller {controller!r} is not mounted under {root}")
            directory.mkdir(exist_ok=True)

    def slot(self, slot: str) -> _V1Cgroup:
        return _V1Cgroup({c: parent / slot for c, parent in self._parents.items()})

    def prepare(self, slot: str, limits: Limits) -> _V1Cgroup:
        dirs = {c: parent / slot for c, parent in self._parents.items()}
        for directory in dirs.values():
            directory.mkdir(exist_ok=True)
        memory = dirs["memory"]
        memsw = memory / "memory.memsw.limit_in_bytes"
        has_memsw = memsw.exists()
        if has_memsw:  # memory may never exceed memory+swap: lift it first, whichever way it moves
            _write(memsw, -1)
        _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
        if has_memsw:
            _write(memsw, limits.memory_bytes)
        _write(memory / "memory.swappiness", 0)
        _write(dirs["pids"] / "pids.max", limits.pids_max)
        _write(dirs["cpu"] / "cpu.cfs_period_us", _CPU_PERIOD_US)
        _write(dirs["cpu"] / "cpu.cfs_quota_us", int(limits.cpu_cores * _CPU_PERIOD_US))
        return _V1Cgroup(dirs)

    def remove_stale(self) -> None:
        """Clear groups a crashed agent left behind, killing whatever still runs in them."""
        for parent in self._parents.values():
            for child in parent.iterdir():
                if child.is_dir():
                    kill_pids(_read_pids(child / "cgroup.procs"))
        for parent in self._parents.values():
            for child in parent.iterdir():
                if child.is_dir():
                    _rmdir(child)

    def remove_all(self) -> None:
        """The agent is stopping: leave nothing of its subtree behind."""
        self.remove_stale()
        for parent in self._parents.values():
            _rmdir(parent)


class _V2Cgroup:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._oom_base = self._oom_counter()

    def _oom_counter(self) -> int:
        return _counter(self._path / "memory.events", "oom_kill")

    def add(self, pid: int) -> None:
        _write(self._path / "cgroup.procs", pid)

    def pids(self) -> list[int]:
        return _read_pids(self._path / "cgroup.procs")

    def oom_kills(self) -> int:
        return self._oom_counter() - self._oom_base

    def kill_all(self) -> None:
        _write(self._path / "cgroup.kill", 1)

    def release(self) -> None:
        """Drop what the last sandbox left charged, when it is much (see _RECLAIM_ABOVE)."""
        if int((self._path / "memory.current").read_text()) <= _RECLAIM_ABOVE:
            return
        try:
            _write(self._path / "memory.reclaim", 1 << 40)
        except OSError:
            pass  # nothing left to reclaim, or an older kernel


class V2Driver:
    """Unified hierarchy. A cgroup with processes cannot delegate controllers ("no internal
    processes"), so the agent moves itself into a leaf before enabling them for sandboxes."""

    version = 2
    _needed = ("memory", "pids", "cpu")

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        own = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1].lstrip("/")
        base = root / own
        agent_leaf = base / "agent"
        agent_leaf.mkdir(exist_ok=True)
        for pid in _read_pids(base / "cgroup.procs"):
            try:
                _write(agent_leaf / "cgroup.procs", pid)
            except ProcessLookupError:
                pass
        available = (base / "cgroup.controllers").read_text().split()
        missing = [c for c in self._needed if c not in available]
        if missing:
            raise CgroupError(f"cgroup v2 at {base} lacks controllers: {', '.join(missing)}")
        enable = " ".join(f"+{c}" for c in self._needed)
        _write(base / "cgroup.subtree_control", enable)
        self._parent = base / parent
        self._parent.mkdir(exist_ok=True)
        _write(self._parent / "cgroup.subtree_control", enable)

    def slot(self, slot: str) -> _V2Cgroup:
        return _V2Cgroup(self._parent / slot)

    def prepare(self, slot: str, limits: Limits) -> _V2Cgroup:
        path = self._parent / slot
        path.mkdir(exist_ok=True)
        _write(path / "memory.max", limits.memory_bytes)
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", 0)
        _write(path / "pids.max", limits.pids_max)
        _write(path / "cpu.max", f"{int(limits.cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
        return _V2Cgroup(path)

    def remove_stale(self) -> None:
        for child in self._parent.iterdir():
            if child.is_dir():
                _V2Cgroup(child).kill_all()
                _rmdir(child)

    def remove_all(self) -> None:
        self.remove_stale()
        _rmdir(self._parent)


def detect(parent: str, root: Path = CGROUP_ROOT) -> Driver:
    """v2 when the root itself is the unified hierarchy, else v1.

    `parent` names this agent's own subtree: agents with different data directories never
    touch each other's sandboxes, and a restarted agent clears only what it left behind.
    """
    if (root / "cgroup.controllers").exists():
        return V2Driver(parent, root)
    return V1Driver(parent, root)
