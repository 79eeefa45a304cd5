"""cgroup limits per sandbox: memory without swap, CPU quota and a pids ceiling.

Current Kubernetes nodes have the unified v2 hierarchy; some hosts (this project's test
machines among them) still carry memory, cpu and pids on v1. The driver is picked by what the
host mounts, so one code path never guesses at the other's files.

Groups are slots, reused from sandbox to sandbox: moving the first process into a brand-new
memory cgroup costs the kernel 7-15 ms, moving one into a used one well under 1 ms. A slot is
handed out only once it is empty; its limits are rewritten and its OOM counter re-based. The
files each sandbox writes or reads again are kept open with their slot: opening them anew
cost every sandbox seven path walks of the spawner's.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

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
    def begin(self) -> None: ...
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


def _read_pids(path: Path | str) -> list[int]:
    """Opened anew each time: a v1 cgroup.procs file keeps the list it first read for as
    long as it stays open."""
    try:
        with open(path, "rb") as handle:
            return [int(line) for line in handle.read().split()]
    except FileNotFoundError:
        return []


class _Knob:
    """A cgroup file kept open with its slot, written or read from its start each time."""

    def __init__(self, path: Path, *, write: bool = False) -> None:
        self._fd = os.open(path, os.O_WRONLY if write else os.O_RDONLY)

    def write(self, value: int) -> None:
        os.write(self._fd, str(value).encode())

    def read(self) -> str:
        return os.pread(self._fd, 4096, 0).decode()

    def close(self) -> None:
        os.close(self._fd)


def _subgroups(parent: Path) -> list[Path]:
    """Child groups of `parent`; none when another cleaner (a spawner outliving its agent)
    removed the subtree first."""
    try:
        return [child for child in parent.iterdir() if child.is_dir()]
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


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class _Slot:
    """What a slot of either hierarchy keeps: its files, open, and where this sandbox's OOM
    kills are counted from."""

    def __init__(self, oom_events: Path, procs: list[Path], usage: Path) -> None:
        self._knobs: list[_Knob] = []
        try:
            self._oom_events = self._open(oom_events)
            self._procs = [self._open(path, write=True) for path in procs]
            self._usage = self._open(usage)
        except OSError:
            self.close()
            raise
        self._oom_base = 0

    def _open(self, path: Path, *, write: bool = False) -> _Knob:
        knob = _Knob(path, write=write)
        self._knobs.append(knob)
        return knob

    def close(self) -> None:
        for knob in self._knobs:
            knob.close()
        self._knobs.clear()

    def _oom_counter(self) -> int:
        return _counter(self._oom_events.read(), "oom_kill")

    def begin(self) -> None:
        """A new sandbox: its OOM kills are counted from here."""
        self._oom_base = self._oom_counter()

    def oom_kills(self) -> int:
        return self._oom_counter() - self._oom_base

    def add(self, pid: int) -> None:
        for procs in self._procs:
            procs.write(pid)

    def _charged(self) -> int:
        return int(self._usage.read())


_S = TypeVar("_S", bound=_Slot)


def _close_all(slots: dict[str, _S]) -> None:
    for slot in slots.values():
        slot.close()
    slots.clear()


class _V1Cgroup(_Slot):
    def __init__(self, dirs: dict[str, Path]) -> None:
        memory = dirs["memory"]
        super().__init__(
            memory / "memory.oom_control",
            [directory / "cgroup.procs" for directory in dirs.values()],
            memory / "memory.usage_in_bytes",
        )
        self._dirs = dirs
        self._pid_list = str(dirs["pids"] / "cgroup.procs")

    def pids(self) -> list[int]:
        return _read_pids(self._pid_list)

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
        if self._charged() <= _RECLAIM_ABOVE:
            return
        try:
            _write(self._dirs["memory"] / "memory.force_empty", 0)
        except OSError:
            pass  # busy or unsupported: the kernel reclaims it under pressure anyway


class V1Driver:
    """Legacy hierarchy: one directory tree per controller."""

    version = 1
    controllers = ("memory", "pids", "cpu", "freezer")

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self._parents = {c: root / c / parent for c in self.controllers}
        self._slots: dict[str, _V1Cgroup] = {}
        for controller, directory in self._parents.items():
            if not (root / controller).is_dir():
                raise CgroupError(f"cgroup v1 controller {controller!r} is not mounted under {root}")
            directory.mkdir(exist_ok=True)

    def slot(self, slot: str) -> _V1Cgroup:
        """A slot prepared before, as it was."""
        return self._slots[slot]

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
        if slot not in self._slots:
            self._slots[slot] = _V1Cgroup(dirs)
        return self._slots[slot]

    def remove_stale(self) -> None:
        """Clear groups a crashed agent left behind, killing whatever still runs in them."""
        _close_all(self._slots)
        for parent in self._parents.values():
            for child in _subgroups(parent):
                kill_pids(_read_pids(child / "cgroup.procs"))
        for parent in self._parents.values():
            for child in _subgroups(parent):
                _rmdir(child)

    def remove_all(self) -> None:
        """The agent is stopping: leave nothing of its subtree behind."""
        self.remove_stale()
        for parent in self._parents.values():
            _rmdir(parent)


class _V2Cgroup(_Slot):
    def __init__(self, path: Path) -> None:
        super().__init__(path / "memory.events", [path / "cgroup.procs"], path / "memory.current")
        self._path = path

    def pids(self) -> list[int]:
        return _read_pids(self._path / "cgroup.procs")

    def kill_all(self) -> None:
        _write(self._path / "cgroup.kill", 1)

    def release(self) -> None:
        """Drop what the last sandbox left charged, when it is much (see _RECLAIM_ABOVE)."""
        if self._charged() <= _RECLAIM_ABOVE:
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
        self._slots: dict[str, _V2Cgroup] = {}

    def slot(self, slot: str) -> _V2Cgroup:
        """A slot prepared before, as it was."""
        return self._slots[slot]

    def prepare(self, slot: str, limits: Limits) -> _V2Cgroup:
        path = self._parent / slot
        path.mkdir(exist_ok=True)
        _write(path / "memory.max", limits.memory_bytes)
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", 0)
        _write(path / "pids.max", limits.pids_max)
        _write(path / "cpu.max", f"{int(limits.cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
        if slot not in self._slots:
            self._slots[slot] = _V2Cgroup(path)
        return self._slots[slot]

    def remove_stale(self) -> None:
        _close_all(self._slots)
        for child in _subgroups(self._parent):
            try:
                _write(child / "cgroup.kill", 1)
            except FileNotFoundError:
                continue  # removed meanwhile by the other cleaner
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
