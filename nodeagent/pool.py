"""Warm pools: sandboxes started ahead per (sandbox config, language), one execution each.

Claiming a warm sandbox is what makes an execution start in milliseconds. When the pool is
empty but a sandbox of it is being started that no other call waits for, a call takes that
one as it becomes ready: it is ready sooner than a cold start would be, and a cold start on a
busy node adds to the very load that emptied the pool. Otherwise the caller gets a cold
start (a sandbox started for it alone, see Runtime.execute), isolated exactly the same way.
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

_WAIT_FOR_START_S = 5.0  # a start taking longer is stuck: the call gets a cold start instead

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
        self._waiters: collections.deque[asyncio.Future[Sandbox | None]] = collections.deque()
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
        return self._counted(self._pop_idle())

    async def take(self) -> Sandbox | None:
        """As claim(), but when the pool is empty, the next sandbox being started that no
        other call waits for, once it is ready (None if it fails to start, or is stuck)."""
        sandbox = self._pop_idle()
        if sandbox is None and self._starting > len(self._waiters) and not self._closed:
            sandbox = await self._wait_for_start()
        return self._counted(sandbox)

    async def _wait_for_start(self) -> Sandbox | None:
        waiter: asyncio.Future[Sandbox | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(_WAIT_FOR_START_S):
                return await waiter
        except TimeoutError:
            # Handed over in the same turn the time ran out: it is this call's all the same.
            return waiter.result() if waiter.done() and not waiter.cancelled() else None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _counted(self, sandbox: Sandbox | None) -> Sandbox | None:
        self.claims += 1
        if sandbox is None:
            self.misses += 1
        return sandbox

    def _pop_idle(self) -> Sandbox | None:
        now = time.monotonic()
        while self._idle:
            candidate = self._idle.popleft()
            if not candidate.closed and now - candidate.created < self.max_idle_s:
                return candidate
            self._spawn_task(candidate.destroy())
        return None

    def _hand_over(self, sandbox: Sandbox | None) -> bool:
        """Give a started sandbox (or None: a start failed) to the first live waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(sandbox)
                return True
        return False

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
            self._hand_over(None)
            retry = asyncio.ensure_future(self._refill_later())
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            return
        finally:
            self._starting -= 1
        if self._closed:
            await sandbox.destroy()
        elif not self._hand_over(sandbox):
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
        while self._hand_over(None):
            pass
        for retry in self._retries:
            retry.cancel()
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(sandbox.destroy() for sandbox in idle), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
