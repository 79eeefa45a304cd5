"""The spawner: a single-threaded process that forks one supervisor per sandbox.

The agent runs gRPC and asyncio threads, and forking a threaded process is unsafe. So the
agent starts this process once; it imports everything sandbox set-up needs (nothing can be
imported after pivot_root), compiles the seccomp filter once, and then only forks. The agent
sends a spec plus the sandbox's pipe ends over a Unix socket (SCM_RIGHTS).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from . import cgroups, frames, seccomp
from .spec import SandboxSpec
from .supervisor import supervise

_FDS_PER_SPAWN = 5


class SpawnerError(Exception):
    """The spawner could not be started or stopped answering."""


def serve(sock: socket.socket, cgroup_parent: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    try:
        driver = cgroups.detect(cgroup_parent)
        driver.remove_stale()
        bpf = seccomp.compile_filter()
    except (OSError, cgroups.CgroupError) as exc:
        frames.send(sock, {"event": "failed", "message": str(exc)})
        return
    frames.send(sock, {"event": "ready", "cgroup_version": driver.version})
    while (frame := frames.recv(sock, max_fds=_FDS_PER_SPAWN)) is not None:
        header, _payload, fds = frame
        spec = SandboxSpec.from_json(header["spec"])
        if os.fork() == 0:
            sock.close()
            supervise(spec, driver, bpf, socket.socket(fileno=fds[0]), fds[1:])
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

    def __init__(self, cgroup_parent: str) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "nodeagent.isolation.spawner", str(child.fileno()), cgroup_parent],
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

    def spawn(self, spec: SandboxSpec) -> SandboxPipes:
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        ready_r, ready_w = os.pipe()
        children = [ctl_child.fileno(), stdin_r, stdout_w, stderr_w, ready_w]
        try:
            frames.send(self._sock, {"op": "spawn", "spec": spec.to_json()}, fds=children)
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
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2])
