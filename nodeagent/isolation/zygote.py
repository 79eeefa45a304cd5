"""Zygotes, the spawner's side: interpreters started once and forked for each warm sandbox.

Starting python costs about 10 ms of CPU, most of what a warm sandbox costs; forking one that
has started costs a fraction of a millisecond. A zygote is started with the argv and
environment a warm sandbox's interpreter gets, from the same binary (images whose
interpreters are the host's own, so the same file at the same path), but on the host, as
root, with a socket on fd 3 (nodeagent/bootstrap/python_bootstrap.py). For each sandbox it
is sent the launcher's eight fds and calls baponi_zygote_spawn() of the launcher's library
(launcher.c): B is cloned straight into the sandbox's namespaces as the spawner's child
(there is no A) and runs the same plan; only C, instead of exec'ing the interpreter, returns
into the one that is already running. What the sandboxes of one zygote share is its start-up
state: the interpreter's hash seed and address layout, never memory (each fork copies on
write).
"""

from __future__ import annotations

import os
import select
import socket

_START_TIMEOUT_S = 10.0


class ZygoteError(OSError):
    """The zygote could not be started, or died twice in a row."""


class Zygote:
    """One zygote process, started on first use and again if it dies."""

    def __init__(self, argv: list[str], env: list[str], library: str) -> None:
        self.argv, self.env, self.library = argv, env, library
        self.pid = 0
        self._sock: socket.socket | None = None
        self._pidfd = -1

    def spawn(self, fds: list[int]) -> int:
        """The pid of the sandbox's first process (its init: there is no A), given the
        launcher fds 0-7 in `fds`."""
        for _ in range(2):
            if self._sock is None or self._dead():
                self.close()
                self._start()
            assert self._sock is not None
            try:
                socket.send_fds(self._sock, [b"s"], fds)
                reply = self._sock.recv(16)
            except OSError:
                reply = b""
            if reply:
                pid = int(reply)
                if pid <= 0:
                    raise ZygoteError(f"the zygote {self.argv[0]} could not fork a sandbox")
                return pid
            self.close()
        raise ZygoteError(f"the zygote {self.argv[0]} died twice in a row")

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            actions = [
                *[(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)],
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            ]
            # Not the sandbox's home: python runs the .pth files of ~/.local at start, and a
            # /home/baponi on the host (a service user's, say) is not root's to trust.
            env = {**dict(item.split("=", 1) for item in self.env), "HOME": "/nonexistent"}
            self.pid = os.posix_spawn(self.argv[0], self.argv, env, file_actions=actions)
        finally:
            os.close(null)
            theirs.close()
        self._sock, self._pidfd = ours, os.pidfd_open(self.pid)
        ours.sendall(self.library.encode())
        ready, _, _ = select.select([ours], [], [], _START_TIMEOUT_S)
        if not ready or ours.recv(1) != b"R":
            self.close()
            raise ZygoteError(f"the zygote {self.argv[0]} did not start")

    def _dead(self) -> bool:
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def close(self) -> None:
        """Its socket closed, the zygote exits (the spawner's reactor reaps it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
