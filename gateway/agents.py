"""The gateway's side of the node agents: a client per agent, a pool that picks one, and the
agent embedded in this process on one machine.

Each has the shape of `Runtime.execute` and fails the same way: `AgentUnavailable`, saying
whether the code had been handed over. Code never runs twice for one request: a call is
retried on another agent only when it failed before that point.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import structlog

from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk
from nodeagent.metrics import Metrics as AgentMetrics
from nodeagent.proto import CHANNEL_OPTIONS, agent_pb2, agent_pb2_grpc
from nodeagent.proto.convert import event_from_proto, request_to_proto
from nodeagent.runtime import REJECTIONS, Runtime

log = structlog.get_logger("baponi.gateway.agents")

Event = OutputChunk | ExecutionResult
OnStart = Callable[[], Awaitable[None]]
# Beyond the code's own timeout: sandbox start, claim-time work, collecting the home archive.
_DEADLINE_SLACK_S = 30.0
_STATUS_TIMEOUT_S = 5.0
_REJECTED = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


class AgentUnavailable(Exception):
    """The agent could not be reached or the call broke; `started`: the code was handed over."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.message = message
        self.started = started


class AgentRejected(Exception):
    """The agent refused the request itself (unknown sandbox, bad argument); same anywhere."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class AgentClient:
    """One node agent at `address` (`unix:///path` or `host:port`); create it in the event loop."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = agent_pb2_grpc.NodeAgentStub(self._channel)
        self.in_flight = 0  # this client's calls in progress
        self.available = True  # the last call or status reached the agent
        self._others = 0  # calls of other callers running at the last Status

    @property
    def load(self) -> int:
        """Executions on the agent: others' as of the last Status, plus ours now."""
        return self._others + self.in_flight

    async def execute(self, sandbox: str, request: ExecutionRequest, *, on_start: OnStart | None = None) -> AsyncIterator[Event]:
        """Output, then the result; `on_start` is awaited on the agent's Started, as the runtime
        does. Close the iterator (contextlib.aclosing) to stop early: that cancels the call, and
        the agent kills the sandbox."""
        started = False
        call = self._stub.Execute(request_to_proto(sandbox, request), timeout=request.timeout + _DEADLINE_SLACK_S)
        self.in_flight += 1
        try:
            async for message in call:
                if message.HasField("started"):
                    started = True
                    if on_start is not None:
                        await on_start()
                    continue
                event = event_from_proto(message)
                if event is not None:
                    yield event
                if isinstance(event, ExecutionResult):
                    self.available = True
                    return
            raise self._unavailable("the stream ended without a result", started)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _REJECTED:
                raise self._unavailable(f"{exc.code().name}: {exc.details()}", started) from None
            self.available = True
            raise AgentRejected(exc.code(), exc.details() or "") from None
        finally:
            self.in_flight -= 1
            if not call.done():  # cancelling a finished call still costs grpc a round of work
                call.cancel()

    async def status(self) -> agent_pb2.AgentStatus:
        """The agent's pools and load; also refreshes `load` and `available`."""
        try:
            status = await self._stub.Status(agent_pb2.StatusRequest(), timeout=_STATUS_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(f"{exc.code().name}: {exc.details()}", started=False) from None
        self.available = True
        self._others = max(0, status.running - self.in_flight)
        return status

    def _unavailable(self, reason: str, started: bool) -> AgentUnavailable:
        self.available = False
        return AgentUnavailable(f"agent {self.address}: {reason}", started)

    async def close(self) -> None:
        await self._channel.close()


class AgentPool:
    """Sends each call to the least-loaded agent, the preferred one first when it is up."""

    def __init__(self, clients: Sequence[AgentClient]) -> None:
        self.clients = list(clients)

    async def refresh(self) -> None:
        """Ask every agent for its Status (load, availability); unreachable ones are marked so."""
        await asyncio.gather(*(_refresh(client) for client in self.clients))

    def _candidates(self, prefer: str | None) -> list[AgentClient]:
        ordered = sorted(self.clients, key=lambda c: (not c.available, c.load))
        preferred = [c for c in ordered if c.address == prefer and c.available]
        return preferred + [c for c in ordered if c not in preferred]

    async def execute(
        self, sandbox: str, request: ExecutionRequest, *, on_start: OnStart | None = None, prefer: str | None = None
    ) -> AsyncIterator[Event]:
        """Like AgentClient.execute; each agent is tried at most once, and only until one has
        started the code (so `on_start` runs once). `prefer`: an agent address to try first
        (thread affinity)."""
        reasons: list[str] = []
        for client in self._candidates(prefer):
            try:
                async with contextlib.aclosing(client.execute(sandbox, request, on_start=on_start)) as events:
                    async for event in events:
                        yield event
                return
            except AgentUnavailable as exc:
                if exc.started:
                    raise
                log.warning("agent unavailable before start; trying another", agent=client.address, reason=exc.message)
                reasons.append(exc.message)
        raise AgentUnavailable("no agent could take the call: " + ("; ".join(reasons) or "no agents configured"), started=False)


class EmbeddedAgent:
    """The node agent's runtime in this process (`baponi serve`): what a gRPC agent does for
    a call, without the hop, which costs about 2 ms on an idle machine (each message wakes
    three threads on each side). Refusals pass as they are; a failure of the sandbox or the
    spawner becomes `AgentUnavailable`, as a remote agent's would."""

    def __init__(self, runtime: Runtime, metrics: AgentMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    async def execute(self, sandbox: str, request: ExecutionRequest, *, on_start: OnStart | None = None) -> AsyncIterator[Event]:
        started = False

        async def handed_over() -> None:
            nonlocal started
            started = True
            if on_start is not None:
                await on_start()

        events = self.metrics.count(request.language, self.runtime.execute(sandbox, request, on_start=handed_over))
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        except REJECTIONS:
            raise
        except Exception as exc:
            phase = "after" if started else "before"
            log.error("sandbox failed", started=started, error=str(exc), exc_info=True)
            raise AgentUnavailable(f"the sandbox failed {phase} the code started: {exc}", started) from exc


async def _refresh(client: AgentClient) -> None:
    with contextlib.suppress(AgentUnavailable):
        await client.status()
