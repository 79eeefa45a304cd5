"""The spawner's one poll loop: readable fds, timers and exited children, each with its callback.

Every sandbox's supervision is a handful of such callbacks, so one single-threaded process
watches them all without a process (or a thread) per sandbox.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import signal
import time
from collections.abc import Callable

ChildExited = Callable[[int], None]  # the child's wait status


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self) -> None:
        self._poll = select.poll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._children: dict[int, ChildExited] = {}
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_w = wake_w
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes poll() through the wakeup fd
        self.add_reader(self._wake_r, self._reap)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """`callback` whenever `fd` is readable or hung up."""
        self._poll.register(fd, select.POLLIN)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """`callback` at time.monotonic() `when`, unless cancelled first."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def watch_child(self, pid: int, callback: ChildExited) -> None:
        """`callback(status)` once the child `pid` has exited and been reaped."""
        self._children[pid] = callback

    def _reap(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._children.pop(pid, None)  # orphans of sandboxes just go
            if callback is not None:
                callback(status)

    def run_once(self, max_wait: float | None = None) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        wait = max_wait
        if self._timers:
            until_timer = max(0.0, self._timers[0][0] - time.monotonic())
            wait = until_timer if wait is None else min(wait, until_timer)
        ready = self._poll.poll(None if wait is None else int(wait * 1000) + 1)
        # Taken now: a callback may close an fd whose event is still to come, and the number
        # may be reused within this round for another reader, which that event is not for.
        for fd, callback in [(fd, self._readers.get(fd)) for fd, _ in ready]:
            if callback is not None and self._readers.get(fd) is callback:
                callback()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def close_in_child(self) -> None:
        """In a forked child: stop the parent's signal plumbing."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
