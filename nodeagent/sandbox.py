"""The agent's handle on one started sandbox: claim-time work, one run, then it is gone."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from .execution import ExecutionRequest, ExecutionResult, OutputChunk, Stream
from .isolation import frames
from .isolation import request as wire_request
from .isolation.spawner import SandboxPipes
from .isolation.supervisor import READY

_READ_SIZE = 1 << 16
# A kill is done in milliseconds; a spawner that has not confirmed it by then is stuck, and
# closing our end of the control socket still has it kill the sandbox once it reads again.
_KILL_CONFIRM_S = 5.0


class SandboxError(Exception):
    """The sandbox itself failed (start-up, claim-time work); the code did not run."""


# Put in a run's queue, after the output before it, when a pipe ends or the supervisor reports.
_NEWS = object()


class _OutputReader:
    """Drains one pipe without blocking the loop; keeps at most `limit` bytes, counts the rest.
    Its chunks, and _NEWS when it ends, go to the run's queue."""

    def __init__(self, fd: int, stream: Stream, limit: int, queue: asyncio.Queue) -> None:
        self.fd, self.stream, self.limit, self.queue = fd, stream, limit, queue
        self.kept = 0
        self.total = 0
        self.done = False
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.cancel()
            return
        self._keep(data)

    def drain(self) -> None:
        """Take what the pipe holds now, then stop reading. Once the code has said it ended,
        all it wrote is there: a write to a pipe is done when it returns."""
        try:
            while data := os.read(self.fd, _READ_SIZE):
                self._keep(data)
        except BlockingIOError:
            pass
        self.cancel()

    def _keep(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.kept
        if room > 0:
            kept = data[:room]
            self.kept += len(kept)
            self.queue.put_nowait(OutputChunk(self.stream, kept))

    def cancel(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        if not self.done:
            self.done = True
            self.queue.put_nowait(_NEWS)


async def _write_all(fd: int, data: bytes) -> None:
    """Write to a pipe the sandbox reads concurrently; the request may exceed its buffer."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
            view = view[written:]
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(fd, writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(fd)


class Sandbox:
    """One isolated sandbox, started ahead or on demand, serving exactly one execution."""

    def __init__(self, pipes: SandboxPipes, output_limit: int) -> None:
        self.pipes = pipes
        self.output_limit = output_limit
        self.created = time.monotonic()
        self.init_pid: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = False
        self._exited: asyncio.Future | None = None
        self._finished = False
        self.closed = False

    async def _frame(self) -> tuple[dict, bytes]:
        assert self._reader is not None
        frame = await frames.read(self._reader)
        if frame is None:
            raise SandboxError("sandbox supervisor hung up")
        return frame

    async def _send(self, header: dict, payload: bytes = b"") -> None:
        assert self._writer is not None
        self._writer.write(frames.encode(header, payload))
        await self._writer.drain()

    async def wait_ready(self) -> None:
        """Until the sandbox is isolated and its interpreter waits for code."""
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self.pipes.ctl)
        header, _ = await self._frame()
        if header.get("event") != "started":
            raise SandboxError(header.get("message", f"sandbox failed to start: {header}"))
        self.init_pid = int(header["pid"])
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_ready() -> None:
            try:
                value = os.eventfd_read(self.pipes.ready)
            except BlockingIOError:
                return
            if not ready.done():
                ready.set_result(value)

        loop.add_reader(self.pipes.ready, on_ready)
        try:
            if await ready != READY:  # it ended instead (GONE): what it printed says why
                raise SandboxError(await self._startup_error())
        finally:
            loop.remove_reader(self.pipes.ready)

    async def _startup_error(self) -> str:
        """What the sandbox printed before dying at start-up (it says why)."""
        try:
            text = os.read(self.pipes.stderr, 4096).decode(errors="replace").strip()
        except BlockingIOError:
            text = ""
        return text or "sandbox exited during start-up"

    async def _claim_op(self, header: dict, payload: bytes = b"") -> None:
        await self._send(header, payload)
        reply, _ = await self._frame()
        if reply.get("event") != "done":
            raise SandboxError(reply.get("message", f"{header['op']} failed"))

    async def prepare(self, request: ExecutionRequest) -> None:
        """Claim-time work: the call's mounts and home (and whether to collect it after the
        run), before any code is handed over."""
        if self._used:
            raise SandboxError("a sandbox serves one execution only")
        self._used = True
        for mount in request.mounts:
            await self._claim_op({"op": "mount", "source": mount.source, "target": mount.target, "read_only": mount.read_only})
        if request.home:
            await self._claim_op({"op": "home"}, request.home)
        if request.collect_home:  # asked ahead: once the code has run, its namespaces may be gone
            await self._claim_op({"op": "collect_home"})

    async def run(self, request: ExecutionRequest, *, cold_start: bool = False) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """Run the request's code (after `prepare`); yield output as it comes, the result last."""
        if not self._used or self._exited is not None:
            raise SandboxError("prepare() a sandbox once, then run it once")
        # Output and news in the order they came: one queue, awaited by this task alone (a
        # task per wait, and asyncio.wait over several futures, cost each event ~0.1 ms).
        queue: asyncio.Queue[OutputChunk | object] = asyncio.Queue()
        readers = [
            _OutputReader(self.pipes.stdout, "stdout", self.output_limit, queue),
            _OutputReader(self.pipes.stderr, "stderr", self.output_limit, queue),
        ]
        started = time.monotonic()
        try:
            await self._send({"op": "run", "timeout": request.timeout})
            await _write_all(self.pipes.stdin, wire_request.encode(request.code, request.env))
            os.close(self.pipes.stdin)
            self.pipes.stdin = -1
            exited = self._exited = asyncio.ensure_future(self._frame())
            exited.add_done_callback(lambda _: queue.put_nowait(_NEWS))
            while not (all(r.done for r in readers) and queue.empty()):
                item = await queue.get()
                if isinstance(item, OutputChunk):
                    yield item
                elif exited.done() and not exited.exception() and exited.result()[0].get("announced"):
                    for reader in readers:  # its pipes may stay open a while, in its exit
                        if not reader.done:  # each drain's own news comes back here
                            reader.drain()
            header, home = await exited
            duration_ms = (time.monotonic() - started) * 1000
            self._finished = True
        finally:
            for reader in readers:
                reader.cancel()
        stdout, stderr = readers
        yield ExecutionResult(
            exit_code=int(header["exit_code"]),
            duration_ms=duration_ms,
            timed_out=bool(header["timed_out"]),
            oom_killed=bool(header["oom_killed"]),
            signal=header.get("signal"),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            stdout_bytes=stdout.total,
            stderr_bytes=stderr.total,
            cold_start=cold_start,
            home=home if request.collect_home else None,
            error=header.get("error"),
        )

    async def destroy(self) -> None:
        """Kill an unused sandbox (recycling, shutdown) and wait until its supervisor is done."""
        if self.closed:
            return
        try:
            if self._writer is not None and not self._finished:
                async with asyncio.timeout(_KILL_CONFIRM_S):
                    await self._send({"op": "kill"})
                    # A run cut short still has its read of the final frame pending: reuse it,
                    # a second reader on the same stream is an error.
                    pending, self._exited = self._exited, None
                    header = (await pending)[0] if pending is not None else {}
                    while header.get("event") != "exited":
                        header = (await self._frame())[0]
        except (SandboxError, frames.FrameError, ConnectionError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        else:
            self.pipes.ctl.close()
        for fd in (self.pipes.stdin, self.pipes.stdout, self.pipes.stderr, self.pipes.ready):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
