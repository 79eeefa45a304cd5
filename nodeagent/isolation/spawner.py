"""The spawner: a single-threaded process that starts and supervises every sandbox.

The agent runs gRPC and asyncio threads, and forking a threaded process is unsafe. So the
agent starts this process once; it supervises every sandbox in one poll loop (supervisor.py),
starting each with the native launcher and forking only for claim-time jobs. The agent sends
each sandbox's pipe ends over a Unix socket (SCM_RIGHTS) with the recipe it starts from:
what its supervisor needs and its plan, sent in full once, then named by number. Each job process shares this process's memory and pays, at fork and at exit,
for each page of it: so it imports only what supervisors use (the plan and the seccomp
filter are made in the agent).
"""

from __future__ import annotations

import fcntl
import gc
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import setproctitle

from . import cgroups, frames
from . import syscalls as sc
from .launcher import library_of
from .reactor import Reactor
from .supervisor import Launch, Supervision, Supervisor
from .zygote import Zygote

_FDS_PER_SPAWN = 5


class SpawnerError(Exception):
    """The spawner could not be started or stopped answering."""


class _AgentGone(Exception):
    """The agent closed its socket: stop every sandbox, then exit."""


class _Spawner:
    """The spawner's state: its sandboxes' supervisors and the cgroup slots they hold."""

    def __init__(self, sock: socket.socket, driver: cgroups.Driver, launcher: str) -> None:
        self.sock, self.driver, self.launcher = sock, driver, launcher
        self.reactor = Reactor()
        self.supervisors: dict[Supervisor, str] = {}
        self._free: list[str] = []
        self._limits: dict[str, cgroups.Limits] = {}  # what each slot was last prepared with
        self._count = 0
        self._zygotes: dict[tuple[tuple[str, ...], tuple[str, ...]], Zygote] = {}
        self._recipes: dict[int, tuple[Supervision, Launch]] = {}

    def _zygote(self, supervision: Supervision) -> Zygote | None:
        """The zygote of the sandbox's interpreter, if it is to be forked from one."""
        if supervision.zygote is None:
            return None
        if supervision.zygote not in self._zygotes:
            argv, env = supervision.zygote
            self._zygotes[supervision.zygote] = Zygote(list(argv), list(env), str(library_of(self.launcher)))
        return self._zygotes[supervision.zygote]

    def _take_slot(self) -> str:
        if self._free:
            return self._free.pop()
        self._count += 1
        return f"s{self._count}"

    def _prepare(self, slot: str, limits: cgroups.Limits) -> cgroups.Cgroup:
        """The slot's cgroup with these limits, for a new sandbox; they are written only when
        they change (most sandboxes of a node share one configuration)."""
        if self._limits.get(slot) == limits:
            cgroup = self.driver.slot(slot)
        else:
            self._limits.pop(slot, None)
            cgroup = self.driver.prepare(slot, limits)
            self._limits[slot] = limits
        cgroup.begin()
        return cgroup

    def _done(self, supervisor: Supervisor, empty: bool) -> None:
        """A slot is lent again only once its supervisor saw nothing left running in it."""
        slot = self.supervisors.pop(supervisor)
        if empty:
            self._free.append(slot)

    def _learn(self, number: int, supervision: Supervision, plan: bytes) -> None:
        """A recipe, kept until the spawner stops; its plan in a sealed memfd that every
        sandbox of the recipe is handed (the launcher reads it with pread, never moving the
        offset their fds share)."""
        fd = os.memfd_create("baponi-plan", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        view = memoryview(plan)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        self._recipes[number] = supervision, Launch(self.launcher, fd, self._zygote(supervision))

    def on_agent(self) -> None:
        frame = frames.recv(self.sock, max_fds=_FDS_PER_SPAWN)
        if frame is None:
            raise _AgentGone
        header, plan, fds = frame
        if "supervision" in header:
            self._learn(header["recipe"], Supervision.from_json(header["supervision"]), plan)
        recipe = self._recipes.get(header.get("recipe", -1))
        if recipe is None:
            _refuse(fds, f"no recipe {header.get('recipe')!r} was sent")
            return
        supervision, launch = recipe
        slot = self._take_slot()
        try:
            cgroup = self._prepare(slot, supervision.limits)
        except OSError as exc:
            self._free.append(slot)
            _refuse(fds, f"cgroup {slot}: {exc}")
            return
        supervisor = Supervisor(
            supervision, cgroup, launch, socket.socket(fileno=fds[0]), fds[1:], self.reactor, self._done
        )
        self.supervisors[supervisor] = slot
        supervisor.start()

    def stop(self, timeout: float) -> None:
        """Kill every sandbox and wait, up to `timeout`, until each is cleaned up."""
        self.reactor.remove_reader(self.sock.fileno())
        for supervisor in list(self.supervisors):
            supervisor.abandon()
        give_up = time.monotonic() + timeout
        while self.supervisors and time.monotonic() < give_up:
            self.reactor.run_once(max_wait=0.05)
        for zygote in self._zygotes.values():
            zygote.close()
        for _, launch in self._recipes.values():
            os.close(launch.plan)
        self.driver.remove_all()


def _refuse(fds: list[int], message: str) -> None:
    frames.send(socket.socket(fileno=fds[0]), {"event": "failed", "message": message})
    for fd in fds[1:]:
        os.close(fd)


def serve(sock: socket.socket, cgroup_parent: str, launcher: str) -> None:
    # A neutral title in the host's process list, beside the sandboxes' own "baponi-sandbox".
    setproctitle.setproctitle("baponi-spawner")
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # an orphaned init (its A killed) is ours to reap
    try:
        driver = cgroups.detect(cgroup_parent)
        driver.remove_stale()
    except (OSError, cgroups.CgroupError) as exc:
        frames.send(sock, {"event": "failed", "message": str(exc)})
        return
    spawner = _Spawner(sock, driver, launcher)
    spawner.reactor.add_reader(sock.fileno(), spawner.on_agent)
    # What job processes inherit stays put: without this, a collection in one would touch
    # (and so copy) every object page of ours.
    gc.freeze()
    frames.send(sock, {"event": "ready", "cgroup_version": driver.version})
    try:
        while True:
            spawner.reactor.run_once()
    except _AgentGone:
        spawner.stop(timeout=10)


@dataclass
class SandboxPipes:
    """The agent's ends of one sandbox: control socket, stdin, stdout, stderr, and the ready
    eventfd it shares with the sandbox and its supervisor (supervisor.py says who reads when)."""

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


@dataclass(frozen=True, eq=False)
class Recipe:
    """What every sandbox of one kind starts from: its supervision and its ~66 KB plan. The
    spawner is sent a recipe once and keeps it: encoding, sending and decoding it for each
    sandbox cost the two processes about half a millisecond of CPU."""

    supervision: Supervision
    plan: bytes


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
        self._recipes: dict[Recipe, int] = {}  # sent, by the number that names them

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def spawn(self, recipe: Recipe) -> SandboxPipes:
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        ready = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        children = [ctl_child.fileno(), stdin_r, stdout_w, stderr_w, os.dup(ready)]
        number = self._recipes.get(recipe)
        try:
            if number is None:
                number = len(self._recipes)
                header = {"op": "spawn", "recipe": number, "supervision": recipe.supervision.to_json()}
                frames.send(self._sock, header, recipe.plan, fds=children)
                self._recipes[recipe] = number
            else:
                frames.send(self._sock, {"op": "spawn", "recipe": number}, fds=children)
        except OSError as exc:
            for fd in (stdin_w, stdout_r, stderr_r, ready):
                os.close(fd)
            ctl.close()
            raise SpawnerError(f"sandbox spawner is gone: {exc}") from exc
        finally:
            ctl_child.close()
            for fd in children[1:]:
                os.close(fd)
        return SandboxPipes(ctl, stdin_w, stdout_r, stderr_r, ready)

    def close(self) -> None:
        self._sock.close()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2], sys.argv[3])
