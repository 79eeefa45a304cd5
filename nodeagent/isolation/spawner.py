"""The spawner: a single-threaded process that forks one supervisor per sandbox.

The agent runs gRPC and asyncio threads, and forking a threaded process is unsafe. So the
agent starts this process once, and it only forks: one supervisor per sandbox, which starts
the native launcher. The agent sends what the supervisor needs, the sandbox's plan and its
pipe ends over a Unix socket (SCM_RIGHTS). Every supervisor shares this process's memory and
pays, at fork and at exit, for each page of it: so it imports only what supervisors use (the
plan and the seccomp filter are made in the agent).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import setproctitle

from . import cgroups, frames
from .supervisor import Launch, Supervision, supervise

_FDS_PER_SPAWN = 5


class SpawnerError(Exception):
    """The spawner could not be started or stopped answering."""


class _Slots:
    """cgroup slots, each lent to one supervisor and taken back when it has exited."""

    def __init__(self, driver: cgroups.Driver) -> None:
        self._driver = driver
        self._free: list[str] = []
        self._lent: dict[int, str] = {}
        self._count = 0

    def take(self) -> str:
        if self._free:
            return self._free.pop()
        self._count += 1
        return f"s{self._count}"

    def give_back(self, slot: str) -> None:
        self._free.append(slot)

    def lend(self, pid: int, slot: str) -> None:
        self._lent[pid] = slot

    def wait_all(self, timeout: float) -> None:
        """Until every supervisor has exited (each kills its sandbox once the agent is gone)."""
        deadline = time.monotonic() + timeout
        while self._lent and time.monotonic() < deadline:
            time.sleep(0.01)
            self.reap()

    def reap(self) -> None:
        """Collect exited supervisors; a slot is reused only once nothing runs in it."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self._lent.pop(pid, None)
            if slot is None:
                continue
            cgroup = self._driver.slot(slot)
            if cgroup.pids():
                cgroup.kill_all()  # its supervisor died abnormally: never hand out a busy slot
            if not cgroup.pids():
                self._free.append(slot)


def _refuse(fds: list[int], message: str) -> None:
    frames.send(socket.socket(fileno=fds[0]), {"event": "failed", "message": message})
    for fd in fds[1:]:
        os.close(fd)


def serve(sock: socket.socket, cgroup_parent: str, launcher: str) -> None:
    # A neutral title in the host's process list, beside the sandboxes' own "baponi-sandbox".
    setproctitle.setproctitle("baponi-spawner")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the wakeup fd
    try:
        driver = cgroups.detect(cgroup_parent)
        driver.remove_stale()
    except (OSError, cgroups.CgroupError) as exc:
        frames.send(sock, {"event": "failed", "message": str(exc)})
        return
    slots = _Slots(driver)
    # Everything the forks inherit stays put: without this, a collection in a child would
    # touch (and so copy) every object page of ours, several ms of page faults per sandbox.
    gc.freeze()
    frames.send(sock, {"event": "ready", "cgroup_version": driver.version})
    while True:
        readable, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            slots.reap()
        if sock not in readable:
            continue
        frame = frames.recv(sock, max_fds=_FDS_PER_SPAWN)
        if frame is None:  # the agent is gone
            slots.wait_all(timeout=10)
            driver.remove_all()
            return
        header, plan, fds = frame
        supervision = Supervision.from_json(header["supervision"])
        slot = slots.take()
        try:
            cgroup = driver.prepare(slot, supervision.limits)
        except OSError as exc:
            slots.give_back(slot)
            _refuse(fds, f"cgroup {slot}: {exc}")
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            os.close(wake_r)
            os.close(wake_w)
            supervise(supervision, cgroup, Launch(launcher, plan), socket.socket(fileno=fds[0]), fds[1:])
        slots.lend(pid, slot)
        for fd in fds:
            os.close(fd)


@dataclass
class SandboxPipes:
    """The agent's ends of one sandbox: control socket, stdin, stdout, stderr, ready."""

    ctl: socket.socket
    stdin: int
    stdout: int
    stderr: int
    ready: int

    def close(self) -> None:
        self.ctl.close()
        for fd in (self.stdin, self.stdout, self.stderr, self.ready):
            try:
                os.close(fd)
            except OSError:
                pass


class Spawner:
    """The agent's handle on the spawner process."""

    def __init__(self, cgroup_parent: str, launcher: str) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "nodeagent.isolation.spawner", str(child.fileno()), cgroup_parent, launcher],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        child.close()
        self._sock = parent
        hello = frames.recv(parent)
        if hello is None or hello[0].get("event") != "ready":
            reason = hello[0].get("message") if hello else "it exited"
            self.close()
            raise SpawnerError(f"sandbox spawner failed to start: {reason}")
        self.cgroup_version: int = hello[0]["cgroup_version"]

    def spawn(self, supervision: Supervision, plan: bytes) -> SandboxPipes:
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        ready_r, ready_w = os.pipe()
        children = [ctl_child.fileno(), stdin_r, stdout_w, stderr_w, ready_w]
        try:
            frames.send(self._sock, {"op": "spawn", "supervision": supervision.to_json()}, plan, fds=children)
        except OSError as exc:
            for fd in (stdin_w, stdout_r, stderr_r, ready_r):
                os.close(fd)
            ctl.close()
            raise SpawnerError(f"sandbox spawner is gone: {exc}") from exc
        finally:
            ctl_child.close()
            for fd in children[1:]:
                os.close(fd)
        return SandboxPipes(ctl, stdin_w, stdout_r, stderr_r, ready_r)

    def close(self) -> None:
        self._sock.close()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2], sys.argv[3])
