"""The host's view of one call (`run_watched`): which cgroup the sandbox got, what limits
were written there, and every host process that was in it. The limit tests read it, and the
abuse tests (tests/security) use it to show that what a sandbox did left nothing behind on
the host.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionResult
from tests.conftest import Outcome, Runner

SANDBOX_HOST_UID = 201_000  # uid 1000 in the sandbox; the runtime maps 0..65535 onto 200000..
CGROUP_ROOT = Path("/sys/fs/cgroup")
CLEANUP_GRACE_S = 1.0  # the supervisor reports first, then ends the sandbox's init and frees its cgroup
_PF_EXITING = 0x4  # in the flags of /proc/PID/stat; an exiting task already shows root cgroups
_HANDSHAKE_S = 5  # how long a watched call waits for the host to find it before running anyway
# Limit files of the v1 controllers and their v2 counterparts; whichever the host has.
LIMIT_FILES = (
    "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness", "pids.max",
    "cpu.cfs_quota_us", "cpu.cfs_period_us", "memory.max", "memory.swap.max", "cpu.max",
)
# Sampled while the call runs (highest value kept), and counters (their growth kept): a reused
# cgroup keeps its counters and high-water marks, so only what changed during the call counts.
_MEMORY_USAGE = ("memory.usage_in_bytes", "memory.current")  # v1, v2
SAMPLED = ("pids.current", *_MEMORY_USAGE)
COUNTERS = (("pids.events", "max"), ("cpu.stat", "nr_periods"), ("cpu.stat", "nr_throttled"))

# The code a watched call starts with: it creates a marker in its /tmp, which the host looks
# for through /proc/PID/root, and waits (bounded) until the host writes into it.
_PREFIX = {
    "python": (
        "import os as _w_os, time as _w_time\n"
        "open('/tmp/{m}', 'w').close()\n"
        "_w_end = _w_time.monotonic() + {t}\n"
        "while not _w_os.path.getsize('/tmp/{m}') and _w_time.monotonic() < _w_end:\n"
        "    _w_time.sleep(0.002)\n"
        "del _w_os, _w_time, _w_end\n"
    ),
    "bash": ": > /tmp/{m}; for _w in $(seq {n}); do [ -s /tmp/{m} ] && break; sleep 0.002; done; unset _w\n",
    "node": (
        "{{ const fs = require('fs'); fs.writeFileSync('/tmp/{m}', ''); const end = Date.now() + {t} * 1000;"
        " const cell = new Int32Array(new SharedArrayBuffer(4));"
        " while (!fs.statSync('/tmp/{m}').size && Date.now() < end) Atomics.wait(cell, 0, 0, 2); }}\n"
    ),
}


def _read(path: str | Path) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@dataclass(frozen=True)
class HostProcess:
    """One host process of a sandbox; its start time tells a reused pid apart."""

    pid: int
    start: str
    uid: int  # on the host: the code's processes run as SANDBOX_HOST_UID, Baponi's own as root inside

    @classmethod
    def read(cls, pid: int) -> HostProcess | None:
        stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
        if stat is None or status is None:
            return None
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        return cls(pid, stat.rsplit(")", 1)[1].split()[19], int(uid))

    def alive(self) -> bool:
        """It can still run code: this very process (not a reused pid), not doomed."""
        stat = _read(f"/proc/{self.pid}/stat")
        return stat is not None and stat.rsplit(")", 1)[1].split()[19] == self.start and not doomed(self.pid)


def doomed(pid: int) -> bool:
    """It can run no more code: it is gone or a zombie, it has begun to exit (PF_EXITING), or
    a SIGKILL is pending (SigPnd or ShdPnd: it can be neither blocked nor caught); proc(5).
    Looked at twice: a process taking its SIGKILL between the reads shows neither for an
    instant."""
    for _ in range(2):
        status = _read(f"/proc/{pid}/status") or ""
        masks = [line.split()[1] for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
        if any(int(mask, 16) >> (signal.SIGKILL - 1) & 1 for mask in masks):
            return True
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            return True
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X") or int(fields[6]) & _PF_EXITING:
            return True
    return False


def host_uid_processes(uid: int = SANDBOX_HOST_UID) -> list[int]:
    """Host pids whose real or effective uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        status = _read(f"/proc/{name}/status") if name.isdigit() else None
        uids = next((line.split()[1:3] for line in (status or "").splitlines() if line.startswith("Uid:")), [])
        if str(uid) in uids:
            found.append(int(name))
    return found


def cgroup_dirs(pid: int, parent: str) -> list[Path]:
    """The host cgroup directories of `pid` that lie in the agent's subtree `parent`."""
    dirs = []
    for line in (_read(f"/proc/{pid}/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if f"/{parent}/" not in path + "/":
            continue
        for controller in controllers.split(",") if controllers else [""]:
            directory = CGROUP_ROOT / controller / path.lstrip("/")
            if directory.is_dir() and directory not in dirs:
                dirs.append(directory)
    return dirs


def _tasks(directory: Path) -> list[int]:
    return [int(pid) for pid in (_read(directory / "cgroup.procs") or "").split()]


def _counters(directory: Path) -> dict[str, int]:
    values = {}
    for name, key in COUNTERS:
        for line in (_read(directory / name) or "").splitlines():
            if line.startswith(key + " "):
                values[f"{name}:{key}"] = int(line.split()[1])
    return values


@dataclass
class Trace:
    """What the host saw of one call, besides what the caller got back."""

    parent: str  # the agent's cgroup subtree
    marker: str
    outcome: Outcome | None = None
    cgroup_dirs: list[Path] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)  # limit file -> content, read at first sight
    peaks: dict[str, int] = field(default_factory=dict)  # SAMPLED file -> highest value seen
    growth: dict[str, int] = field(default_factory=dict)  # "file:key" of COUNTERS -> increase seen
    processes: dict[int, HostProcess] = field(default_factory=dict)  # every process seen in the cgroup
    _base: dict[str, int] = field(default_factory=dict)

    @property
    def code_processes(self) -> list[HostProcess]:
        return [p for p in self.processes.values() if p.uid == SANDBOX_HOST_UID]

    @property
    def peak_memory(self) -> int:
        return max(self.peaks.get(name, 0) for name in _MEMORY_USAGE)

    def memory_now(self) -> int:
        """What the call's memory cgroup holds now (a reused slot may hold a next, small sandbox)."""
        values = [_read(d / name) for d in self.cgroup_dirs for name in _MEMORY_USAGE]
        return max((int(v) for v in values if v is not None), default=0)

    def _find(self) -> str | None:
        """The marker of the call's sandbox, once it exists; records its cgroups and limits."""
        for pid in host_uid_processes():
            marker = f"/proc/{pid}/root/tmp/{self.marker}"
            if os.path.exists(marker):
                self.cgroup_dirs = cgroup_dirs(pid, self.parent)
                for directory in self.cgroup_dirs:
                    self.limits.update({n: v.strip() for n in LIMIT_FILES if (v := _read(directory / n)) is not None})
                    self._base.update(_counters(directory))
                return marker
        return None

    def poll(self) -> None:
        found = None if self.cgroup_dirs else self._find()
        for directory in self.cgroup_dirs:
            for pid in _tasks(directory):
                if pid not in self.processes and (proc := HostProcess.read(pid)):
                    self.processes[pid] = proc
            for name in SAMPLED:
                if (value := _read(directory / name)) is not None and value.strip().isdigit():
                    self.peaks[name] = max(self.peaks.get(name, 0), int(value))
            for key, value in _counters(directory).items():
                self.growth[key] = max(self.growth.get(key, 0), value - self._base.get(key, 0))
        if found:  # only now may the code go on: its processes are on record
            with open(found, "w") as handle:  # creating a file would need an owner mapped inside
                handle.write("seen")


def watched_code(code: str, language: str, marker: str) -> str:
    return _PREFIX[language].format(m=marker, t=_HANDSHAKE_S, n=_HANDSHAKE_S * 500) + code


async def run_watched(run: Runner, code: str, language: str = "python", *, on_poll: Callable[[], None] | None = None, **fields) -> Trace:  # noqa: ANN003
    """Run `code` through `run` while watching its sandbox from the host every few ms."""
    trace = Trace(run.runtime.cgroup_parent, f".baponi-watch-{uuid.uuid4().hex[:12]}")
    task = asyncio.ensure_future(run(watched_code(code, language, trace.marker), language, **fields))
    while not task.done():
        trace.poll()
        if on_poll is not None:
            on_poll()
        await asyncio.wait({task}, timeout=0.005)
    trace.outcome = task.result()
    assert trace.cgroup_dirs, f"the host never found the call's sandbox: {trace.outcome}"
    return trace


def strays(trace: Trace) -> list[str]:
    """Running host processes of the sandbox uid that belong to the call or escaped every
    sandbox cgroup. Idle warm sandboxes (of this or another agent) legitimately run as that uid
    too; they sit in a cgroup under a baponi- parent and have no marker of this call in /tmp."""
    found = []
    for pid in host_uid_processes():
        process, cgroup = HostProcess.read(pid), _read(f"/proc/{pid}/cgroup")
        if process is None or cgroup is None or not process.alive():
            continue  # it ended while we looked
        seen = trace.processes.get(pid)
        mine = os.path.exists(f"/proc/{pid}/root/tmp/{trace.marker}") or (seen and seen.start == process.start)
        if mine or "/baponi-" not in cgroup:
            command = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ")[:80]
            found.append(f"pid {pid} {command!r} in cgroups {cgroup.split()}")
    return found


def _lingering(trace: Trace, processes: list[HostProcess], *, exiting_counts: bool = True) -> list[str]:
    """Which of `processes` still run, and which of the call's cgroups still hold any of them
    (but for those that can run no more code, unless `exiting_counts`)."""
    alive = [f"host pid {p.pid} (uid {p.uid})" for p in processes if p.alive()]
    pids = {p.pid for p in processes if exiting_counts or p.alive()}
    held = [f"{d} still holds {sorted(set(_tasks(d)) & pids)}" for d in trace.cgroup_dirs if set(_tasks(d)) & pids]
    return alive + held


async def assert_cleaned_up(trace: Trace) -> None:
    """Nothing of the code runs once the caller has the result (its processes are gone,
    exiting or killed: what is left is the kernel's); within a short grace nothing of the sandbox is
    left, Baponi's own part (its init) included, and its cgroups hold none of it (they are
    reused as slots, so they may hold the next sandbox's processes)."""
    assert trace.code_processes, "the watcher never saw the code's processes in the sandbox's cgroup"
    lingering = _lingering(trace, trace.code_processes, exiting_counts=False)
    assert lingering == [], f"the code's processes outlived the call: {lingering}"
    give_up = time.monotonic() + CLEANUP_GRACE_S
    while (left := _lingering(trace, list(trace.processes.values()))) and time.monotonic() < give_up:
        await asyncio.sleep(0.01)
    assert left == [], f"still there {CLEANUP_GRACE_S} s after the call"
    assert strays(trace) == []


def limit_problems(limits: dict[str, str], config: SandboxConfig) -> list[str]:
    """How the cgroup limits the host wrote differ from the sandbox configuration."""
    period = int(limits.get("cpu.cfs_period_us", "100000"))
    if "memory.limit_in_bytes" in limits:  # v1
        expected = {
            "memory.limit_in_bytes": str(config.memory_bytes),
            "memory.swappiness": "0",
            "pids.max": str(config.pids_max),
            "cpu.cfs_quota_us": str(int(config.cpu * period)),
        }
        if "memory.memsw.limit_in_bytes" in limits:  # swap accounting on: memory + swap = memory
            expected["memory.memsw.limit_in_bytes"] = str(config.memory_bytes)
    else:  # v2
        expected = {
            "memory.max": str(config.memory_bytes),
            "memory.swap.max": "0",
            "pids.max": str(config.pids_max),
            "cpu.max": f"{int(config.cpu * 100_000)} 100000",
        }
    return [f"{name} is {limits.get(name)!r}, expected {value!r}" for name, value in expected.items() if limits.get(name) != value]


def ending(result: ExecutionResult) -> tuple[bool, int, int | None, bool]:
    """(timed_out, exit_code, signal, oom_killed): how a call ended, in one comparable value."""
    return result.timed_out, result.exit_code, result.signal, result.oom_killed
