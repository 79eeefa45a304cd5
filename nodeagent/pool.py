"""Warm pools: sandboxes started ahead per (sandbox config, language), one execution each.

Claiming a warm sandbox is what makes an execution start in milliseconds. A claim never waits
for the pool: when it is empty the caller gets a cold start, isolated exactly the same way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

import structlog

from .isolation.spawner import SpawnerError
from .sandbox import Sandbox, SandboxError

log = structlog.get_logger("baponi.pool")

StartSandbox = Callable[[], Awaitable[Sandbox]]


class WarmPool:
    """Keeps `target` idle sandboxes ready; refills in the background after every claim."""

    def __init__(self, key: str, start: StartSandbox, target: int, max_idle_s: float) -> None:
        self.key = key
        self._start = start
        self.target = target
        self.max_idle_s = max_idle_s
        self._idle: collections.deque[Sandbox] = collections.deque()
        self._starting = 0
        self._tasks: set[asyncio.Task] = set()
        self._retries: set[asyncio.Task] = set()  # refills after a failed start, a second later
        self._closed = False
        self.claims = 0
        self.misses = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def claim(self) -> Sandbox | None:
        """A warm sandbox if one is ready (fresh enough), else None.

        The refill is not started here: starting a sandbox costs more CPU than running a
        small program, and on a busy node it would compete with the very call that claimed.
        The caller calls `refill()` once its execution is over.
        """
        now = time.monotonic()
        sandbox = None
        while self._idle:
            candidate = self._idle.popleft()
            if not candidate.closed and now - candidate.created < self.max_idle_s:
                sandbox = candidate
                break
            self._spawn_task(candidate.destroy())
        self.claims += 1
        if sandbox is None:
            self.misses += 1
        return sandbox

    def refill(self) -> None:
        while not self._closed and len(self._idle) + self._starting < self.target:
            self._starting += 1
            self._spawn_task(self._start_one())

    async def _start_one(self) -> None:
        # Behind what is ready on the loop now, such as the answer of the call that ended and
        # asked for this refill: sending a sandbox's spawn takes ~0.4 ms of this thread.
        await asyncio.sleep(0)
        try:
            sandbox = await self._start()
        except (SandboxError, SpawnerError, OSError) as exc:
            log.error("warm sandbox failed to start", pool=self.key, error=str(exc))
            retry = asyncio.ensure_future(self._refill_later())
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            return
        finally:
            self._starting -= 1
        if self._closed:
            await sandbox.destroy()
        else:
            self._idle.append(sandbox)

    async def _refill_later(self) -> None:
        await asyncio.sleep(1.0)  # do not spin on a broken configuration
        self.refill()

    def drop_idle(self) -> None:
        """Destroy every idle sandbox (their spawner died, and they with it) and start anew."""
        idle, self._idle = list(self._idle), collections.deque()
        for sandbox in idle:
            self._spawn_task(sandbox.destroy())
        self.refill()

    def recycle(self) -> None:
        """Replace idle sandboxes older than the maximum age."""
        now = time.monotonic()
        keep = collections.deque()
        for sandbox in self._idle:
            if now - sandbox.created >= self.max_idle_s:
                self._spawn_task(sandbox.destroy())
            else:
                keep.append(sandbox)
        self._idle = keep
        self.refill()

    def _spawn_task(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_full(self, timeout: float = 30.0) -> None:
        """Until the pool holds its target (tests, benchmarks, readiness)."""
        deadline = time.monotonic() + timeout
        while len(self._idle) < self.target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool {self.key} has {len(self._idle)} of {self.target} sandboxes")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._closed = True
        for retry in self._retries:
            retry.cancel()
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(sandbox.destroy() for sandbox in idle), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
