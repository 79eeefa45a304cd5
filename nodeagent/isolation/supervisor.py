"""The host side of one sandbox: its cgroup, its id maps, its clock and its clean-up.

One supervisor process per sandbox, forked by the spawner, root on the host. It talks to the
agent over a control socket (frames): it says when the sandbox is started, takes claim-time
work (mounts, the home archive), starts the wall clock at "run", and reports how the code
ended once every process of the sandbox is gone. If the agent hangs up, the sandbox dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import cgroups, frames, injection
from . import syscalls as sc

_KILL_GRACE_S = 2.0
STATUS = struct.Struct("!i")  # the code's wait status, as the launcher's pid 1 writes it
_HIGH_FD = 64  # above the launcher's fixed fds (0-7), so moving one never clobbers another


@dataclass(frozen=True)
class Supervision:
    """What a supervisor needs to know of its sandbox: the cgroup's limits, the id range its
    user namespace maps to, and the most a collected home may hold."""

    limits: cgroups.Limits
    uid_base: int
    uid_count: int
    home_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Supervision:
        return cls(**{**data, "limits": cgroups.Limits(**data["limits"])})


@dataclass(frozen=True)
class Launch:
    """How to start one sandbox's processes: the launcher binary and the sandbox's plan."""

    path: str
    plan: bytes


@dataclass
class _Run:
    """The state of the one execution this sandbox serves."""

    deadline: float | None = None
    collect_home: bool = False
    timed_out: bool = False
    cancelled: bool = False


class Supervisor:
    def __init__(
        self, supervision: Supervision, cgroup: cgroups.Cgroup, launch: Launch, ctl: socket.socket, stdio: list[int]
    ) -> None:
        self.supervision, self.cgroup, self.launch, self.ctl, self.stdio = supervision, cgroup, launch, ctl, stdio
        self.run = _Run()

    # --- start -----------------------------------------------------------------------------

    def _write_id_maps(self, pid: int) -> None:
        mapping = f"0 {self.supervision.uid_base} {self.supervision.uid_count}\n"
        with open(f"/proc/{pid}/uid_map", "w") as handle:
            handle.write(mapping)
        with open(f"/proc/{pid}/setgroups", "w") as handle:
            handle.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as handle:
            handle.write(mapping)

    def _spawn_launcher(self, up_w: int, down_r: int, status_w: int) -> int:
        """Start the launcher with its fds in place: stdin, stdout, stderr, ready, plan, up,
        down, status (launcher.c). posix_spawn does not copy this process's memory."""
        plan = os.memfd_create("baponi-plan", os.MFD_CLOEXEC)
        try:
            view = memoryview(self.launch.plan)
            while view:
                view = view[os.write(plan, view):]
            os.lseek(plan, 0, os.SEEK_SET)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in (*self.stdio, plan, up_w, down_r, status_w)]
            try:
                actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high)]
                return os.posix_spawn(self.launch.path, ["baponi-sandbox"], {}, file_actions=actions)
            finally:
                for fd in high:
                    os.close(fd)
        finally:
            os.close(plan)

    def start(self) -> int:
        """Start the chain and return pid 1 of the sandbox, as the host sees it."""
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            pid_a = self._spawn_launcher(up_w, down_r, status_w)
        finally:
            for fd in (up_w, down_r, status_w, *self.stdio):
                os.close(fd)
        self.status_r = status_r
        try:
            if os.read(up_r, 1) != b"u":
                raise OSError("sandbox namespaces could not be created")
            self._write_id_maps(pid_a)
            self.cgroup.add(pid_a)
            os.write(down_w, b"m")
            raw = os.read(up_r, 32)
            self.pid_a = pid_a
            if not raw:
                raise OSError("sandbox init did not start")
            return int(raw)
        finally:
            os.close(up_r)
            os.close(down_w)

    # --- serve -----------------------------------------------------------------------------

    def _handle(self, header: dict, payload: bytes) -> None:
        op = header.get("op")
        try:
            if op == "mount":
                injection.mount_into(self.ns, header["source"], header["target"], bool(header["read_only"]))
                frames.send(self.ctl, {"event": "done", "op": op})
            elif op == "home":
                injection.extract_home(self.ns, payload)
                frames.send(self.ctl, {"event": "done", "op": op})
            elif op == "run":
                self.run.deadline = time.monotonic() + float(header["timeout"])
                self.run.collect_home = bool(header.get("collect_home"))
            elif op == "kill":
                self.run.cancelled = True
                self._kill()
            else:
                frames.send(self.ctl, {"event": "error", "op": op, "message": f"unknown op {op!r}"})
        except (OSError, injection.InjectionError, KeyError, ValueError) as exc:
            frames.send(self.ctl, {"event": "error", "op": op, "message": str(exc)})

    def _kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def serve(self, init_pid: int) -> int | None:
        """Until the code ends, the deadline passes or the agent gives up; returns the code's
        wait status, or None when the sandbox was killed before the code ended."""
        self.pidfd = os.pidfd_open(init_pid)
        self.ns = injection.Namespaces.of(init_pid)
        poller = select.poll()
        poller.register(self.ctl, select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        poller.register(self.status_r, select.POLLIN)
        while True:
            timeout_ms = None
            if self.run.deadline is not None:
                timeout_ms = max(0, int((self.run.deadline - time.monotonic()) * 1000) + 1)
            ready = dict(poller.poll(timeout_ms))
            if self.status_r in ready or self.pidfd in ready:
                self._drain_control()
                return self._code_status()
            if self.run.deadline is not None and time.monotonic() >= self.run.deadline:
                self.run.timed_out = True
                self._kill()
                self.run.deadline = None
                continue
            if self.ctl.fileno() in ready:
                frame = frames.recv(self.ctl)
                if frame is None:  # the agent is gone: so is its sandbox
                    self.run.cancelled = True
                    self._kill()
                    poller.unregister(self.ctl)
                    continue
                self._handle(frame[0], frame[1])

    def _drain_control(self) -> None:
        """Code can end before its `run` frame is read (it is sent before the code): take it,
        or the call's instructions (collect the home) would be lost."""
        while not self.run.cancelled and select.select([self.ctl], [], [], 0)[0]:
            frame = frames.recv(self.ctl)
            if frame is None:
                self.run.cancelled = True
                return
            self._handle(frame[0], frame[1])

    def _code_status(self) -> int | None:
        raw = os.read(self.status_r, STATUS.size)
        return STATUS.unpack(raw)[0] if len(raw) == STATUS.size else None

    def _empty_cgroup(self, *ours: int) -> None:
        """No process of the code may survive it; A and B (ours) exit right after."""
        give_up = time.monotonic() + _KILL_GRACE_S
        while [pid for pid in self.cgroup.pids() if pid not in ours]:
            if time.monotonic() > give_up:
                raise cgroups.CgroupError("sandbox processes survived the kill")
            self.cgroup.kill_all()
            time.sleep(0.001)

    def rehearse(self) -> None:
        """Run the end-of-call path once ahead, on nothing. A forked supervisor shares the
        spawner's memory copy-on-write, and the first run of any code copies the pages it
        touches: ~700 page faults, several ms in a VM, otherwise paid when the code has ended
        and the caller is waiting for its result."""
        report = self._report(0) | {"oom_killed": self.cgroup.oom_kills() > 0}
        frames.encode(report, b"")
        json.loads(frames.encode({"op": "run", "timeout": 1.0, "collect_home": False})[frames.PREFIX_SIZE :])
        select.select([self.ctl], [], [], 0)
        self.cgroup.pids()  # only read: B is forking the code's process right now

    def _report(self, status: int | None) -> dict[str, object]:
        report: dict[str, object] = {
            "event": "exited",
            "timed_out": self.run.timed_out,
            "signal": None,
            "error": None,
        }
        if status is None:
            report["exit_code"] = 128 + signal.SIGKILL
            if not (self.run.timed_out or self.run.cancelled):
                report["error"] = "sandbox init died"
        elif os.WIFSIGNALED(status):
            report.update(exit_code=128 + os.WTERMSIG(status), signal=os.WTERMSIG(status))
        else:
            report["exit_code"] = os.WEXITSTATUS(status)
        return report

    def finish(self, init_pid: int, status: int | None) -> None:
        report = self._report(status)
        self._empty_cgroup(init_pid, self.pid_a)
        report["oom_killed"] = self.cgroup.oom_kills() > 0
        home = b""
        if self.run.collect_home and not self.run.cancelled:
            try:
                home = injection.archive_home(self.ns, self.supervision.home_bytes)
            except injection.InjectionError as exc:  # the code's result still stands
                report["error"] = f"home not collected: {exc}"
        try:
            frames.send(self.ctl, report, home)
        except OSError:
            pass
        self._kill()
        _reap_all()  # A reaps B, then exits; B comes to us if A went first
        self.ns.close()
        self._empty_cgroup()
        self.cgroup.release()


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def supervise(
    supervision: Supervision, cgroup: cgroups.Cgroup, launch: Launch, ctl: socket.socket, stdio: list[int]
) -> None:
    """Entry point of the forked supervisor; never returns into the spawner."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # an orphaned B is ours to reap, not the host's init
    supervisor = Supervisor(supervision, cgroup, launch, ctl, stdio)
    try:
        init_pid = supervisor.start()
    except (OSError, cgroups.CgroupError) as exc:
        frames.send(ctl, {"event": "failed", "message": f"sandbox could not start: {exc}"})
        os._exit(1)
    supervisor.rehearse()
    frames.send(ctl, {"event": "started", "pid": init_pid})
    status = supervisor.serve(init_pid)
    supervisor.finish(init_pid, status)
    os._exit(0)
