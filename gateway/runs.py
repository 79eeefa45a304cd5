"""Admitting an execution and running it in a task of its own.

Each execution runs in its own task, apart from the HTTP request that started it, so that a
slow reader, a vanished client or a webhook call with nobody waiting all end the same way:
when the code ends, the thread lock and the key's slot are released and the audit record is
written, and only then is the final event handed to whoever listens. A listener that leaves
early (a closed stream) cancels the execution, which kills its sandbox.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog

from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk

from . import audit
from .agents import AgentUnavailable
from .errors import ApiError, InternalError, InvalidRequest, SandboxUnavailable, ThreadBusy, from_executor
from .limits import Limiter, Slot
from .metrics import Metrics
from .schema import ExecuteRequest, ExecuteResponse
from .settings import Settings
from .store import ApiKey, Store

log = structlog.get_logger("baponi.gateway")
_START_ATTEMPTS = 2


class Executor(Protocol):
    """What runs code: the agent pool in production, the in-process node-agent runtime in tests."""

    def execute(
        self, sandbox: str, request: ExecutionRequest, *, on_start: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[OutputChunk | ExecutionResult]: ...


@dataclass(frozen=True)
class Started:
    """The code was handed to a sandbox."""

    execution_id: str


@dataclass(frozen=True)
class Output:
    stream: str
    text: str


@dataclass(frozen=True)
class Finished:
    response: ExecuteResponse


@dataclass(frozen=True)
class Failed:
    """The execution could not run or end normally; without a `Started` before it, it never ran."""

    error: ApiError


Event = Started | Output | Finished | Failed


class Decoder:
    """UTF-8 per stream as it comes (a character split between chunks is kept whole; invalid
    bytes become U+FFFD), keeping the text for the final answer."""

    def __init__(self) -> None:
        self._decoders = {stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in ("stdout", "stderr")}
        self.text: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.size = {"stdout": 0, "stderr": 0}

    def feed(self, stream: str, data: bytes, final: bool = False) -> str:
        self.size[stream] += len(data)
        text = self._decoders[stream].decode(data, final)
        self.text[stream].append(text)
        return text

    def joined(self, stream: str) -> str:
        return "".join(self.text[stream])


class Runner:
    """Checks a call against its key and sandbox, takes the key's slot and the thread lock, and
    starts the run; tracks runs and background work so shutdown can end them."""

    def __init__(
        self,
        *,
        store: Store,
        executor: Executor,
        sandboxes: Mapping[str, SandboxConfig],
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.store, self.executor, self.sandboxes = store, executor, sandboxes
        self.settings, self.metrics = settings, metrics
        self.limiter = Limiter(retry_after_s=settings.retry_after_s)
        self.runs: set[Run] = set()
        self.background: set[asyncio.Task[None]] = set()

    async def start(self, key: ApiKey, body: ExecuteRequest, *, stream: bool = False) -> Run:
        """`stream`: its events are read as they come (Run.events), else only its end (Run.outcome)."""
        config = self.sandboxes.get(key.sandbox)
        if config is None:
            raise SandboxUnavailable(
                f"this API key's sandbox {key.sandbox!r} is not configured; "
                "an administrator must fix the key or load the sandbox"
            )
        timeout = body.timeout if body.timeout is not None else min(self.settings.default_timeout, config.max_timeout)
        if not 1 <= timeout <= config.max_timeout:
            raise InvalidRequest(
                f"timeout must be between 1 and {config.max_timeout:g} seconds "
                f"for this API key's sandbox, got {timeout:g}"
            )
        execution_id = "ex_" + uuid.uuid4().hex
        slot = self.limiter.admit(key)
        lock = None
        try:
            if body.thread_id is not None:
                # Scoped by key: a thread id chosen by one key's caller never blocks (or later
                # reaches the home directory of) another key's thread of the same name.
                lock = f"{key.id}/{body.thread_id}"
                if not await self.store.acquire_thread(lock, execution_id, self.settings.thread_lock_ttl_s):
                    raise ThreadBusy(f"thread {body.thread_id!r} is running another execution; retry when it ends")
        except BaseException:
            slot.release()
            raise
        request = ExecutionRequest(
            code=body.code,
            language=body.language,
            timeout=float(timeout),
            env={**config.env, **key.env, **body.env_vars},
            execution_id=execution_id,
        )
        return Run(self, key, body, request, slot, lock, stream)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Background work (a webhook's wait for its result) that shutdown waits for."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        """Lets runs end for up to the shutdown grace, cancels the rest (their listeners get a
        final error), then waits for background work such as queueing their webhooks."""
        if self.runs:
            await asyncio.wait([run.task for run in self.runs], timeout=self.settings.shutdown_grace_s)
        for run in list(self.runs):
            run.cancel()
        await asyncio.gather(*(run.task for run in list(self.runs)), return_exceptions=True)
        await asyncio.gather(*self.background, return_exceptions=True)


class Run:
    def __init__(
        self,
        runner: Runner,
        key: ApiKey,
        body: ExecuteRequest,
        request: ExecutionRequest,
        slot: Slot,
        lock: str | None,
        stream: bool,
    ) -> None:
        self.runner, self.key, self.body, self.request = runner, key, body, request
        self.slot, self.lock = slot, lock
        self.execution_id = request.execution_id
        self.log = log.bind(execution_id=self.execution_id, key_id=key.id)
        # Every event for a stream; else only the end, so output wakes no listener (~0.1 ms a chunk).
        self._events: asyncio.Queue[Event] | None = asyncio.Queue() if stream else None
        self._end: asyncio.Future[Finished | Failed] = asyncio.get_running_loop().create_future()
        self._started, self._cancellable = False, True
        self.task = asyncio.ensure_future(self._drive())
        runner.runs.add(self)
        self.task.add_done_callback(lambda _: runner.runs.discard(self))

    def cancel(self) -> None:
        """Stops the code, once, and never during the clean-up: the lock release and the audit
        record always happen."""
        if self._cancellable:
            self._cancellable = False
            self.task.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Each event once, ending with `Finished` or `Failed`, of a run started with `stream`;
        leaving before the end cancels the run."""
        assert self._events is not None, "Runner.start(..., stream=True) for its events"
        try:
            while True:
                event = await self._events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            self.cancel()  # a no-op once the run has ended

    async def outcome(self) -> ExecuteResponse:
        """The whole answer; raises the run's error. Leaving before the end cancels the run."""
        try:
            # Awaited as it is: the answer is then one turn of the loop from the end, as the
            # pool's refill assumes (pool.py). A listener leaving cancels it, and the run.
            end = await self._end
        finally:
            self.cancel()  # a no-op once the run has ended
        if isinstance(end, Failed):
            raise end.error
        return end.response

    def _tell(self, event: Event) -> None:
        if self._events is not None:
            self._events.put_nowait(event)
        if isinstance(event, (Finished, Failed)) and not self._end.done():
            self._end.set_result(event)

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            self._tell(Started(self.execution_id))

    async def _drive(self) -> None:
        started_at, clock = datetime.now(timezone.utc), time.monotonic()
        decoder = Decoder()
        result: ExecutionResult | None = None
        error: ApiError | None = None
        keeper = asyncio.ensure_future(self._keep_lock()) if self.lock else None
        try:
            result = await self._execute(decoder)
        except asyncio.CancelledError as exc:
            error = self._error(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes the run's answer
            error = self._error(exc)
            if isinstance(error, InternalError):
                self.log.error("execution failed unexpectedly", exc_info=exc)
        finally:
            self._cancellable = False
            if keeper is not None:
                keeper.cancel()
            await self._finish(decoder, result, error, started_at, time.monotonic() - clock)

    def _error(self, exc: BaseException) -> ApiError:
        return from_executor(exc, retry_after=self.runner.settings.retry_after_s)

    async def _execute(self, decoder: Decoder) -> ExecutionResult:
        """One more attempt, in a fresh sandbox, after an unexpected failure before the code was
        handed over: it certainly did not run. Typed failures are answered as they are (an agent
        pool has already tried every agent for those)."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                return await self._attempt(decoder)
            except Exception as exc:
                if self._started or attempt == _START_ATTEMPTS or not isinstance(self._error(exc), InternalError):
                    raise
                self.log.warning("the sandbox failed before the code started; trying a fresh one", exc_info=exc)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, decoder: Decoder) -> ExecutionResult:
        result = None
        grace = self.runner.settings.result_grace_s
        execution = self.runner.executor.execute(self.key.sandbox, self.request, on_start=self._start)
        try:
            async with asyncio.timeout(self.request.timeout + grace), contextlib.aclosing(execution) as events:  # type: ignore[type-var]
                async for event in events:
                    if isinstance(event, ExecutionResult):
                        result = event
                        continue
                    await self._start()  # an executor that never calls on_start still starts first
                    if text := decoder.feed(event.stream, event.data):
                        self._tell(Output(event.stream, text))
        except TimeoutError:
            raise AgentUnavailable(
                f"no result {grace:g} s after the code's {self.request.timeout:g} s timeout; the call was ended "
                "and its sandbox killed", started=self._started,
            ) from None
        if result is None:
            raise RuntimeError("the executor ended without a result")
        return result

    async def _finish(
        self,
        decoder: Decoder,
        result: ExecutionResult | None,
        error: ApiError | None,
        started_at: datetime,
        seconds: float,
    ) -> None:
        """Release, record, then answer: the caller's next call on the same thread never finds it busy."""
        if self.lock is not None:
            await self._quietly(
                "release the thread lock", self.runner.store.release_thread(self.lock, self.execution_id)
            )
        self.slot.release()
        record = audit.record(self, result, error, decoder.size, started_at, seconds)
        await self._quietly("write the audit record", self.runner.store.record_execution(record))
        if result is not None:
            await self._start()
            for stream in ("stdout", "stderr"):
                if text := decoder.feed(stream, b"", final=True):
                    self._tell(Output(stream, text))
            response = ExecuteResponse.of(self.execution_id, decoder.joined("stdout"), decoder.joined("stderr"), result)
            self._tell(Finished(response))
            outcome = "ok" if result.success else "error_exit"
        else:
            assert error is not None
            self._tell(Failed(error))
            outcome = "failed"
        # Queued behind the listener, which the event above has just woken: the answer goes
        # out before the metrics and the log line are made (~0.2 ms).
        asyncio.get_running_loop().call_soon(self._report, outcome, error, seconds)

    def _report(self, outcome: str, error: ApiError | None, seconds: float) -> None:
        self.runner.metrics.observe_execution(self.request.language, outcome, seconds)
        self.log.info("execution finished", outcome=outcome, error=error and error.code, seconds=round(seconds, 4))

    async def _keep_lock(self) -> None:
        """Refreshes the thread lock while the code runs, so it can be short-lived yet outlast long calls."""
        assert self.lock is not None
        ttl = self.runner.settings.thread_lock_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            if not await self._quietly(
                "refresh the thread lock", self.runner.store.refresh_thread(self.lock, self.execution_id, ttl)
            ):
                self.log.warning("thread lock lost while running", thread_id=self.body.thread_id)

    async def _quietly(self, what: str, work: Awaitable[Any]) -> Any:
        """Store work that must not turn a finished execution into an error; failures are logged."""
        try:
            return await work
        except Exception as exc:  # noqa: BLE001
            self.log.error(f"could not {what}", exc_info=exc)
            return None
