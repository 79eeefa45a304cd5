"""The NodeAgent gRPC servicer: proto calls onto the Runtime, its errors onto status codes.

Status codes (the contract in proto/baponi/agent/v1/agent.proto):

* NOT_FOUND: unknown sandbox configuration.
* INVALID_ARGUMENT: the request asks for what its sandbox does not allow (a timeout beyond
  its maximum).
* FAILED_PRECONDITION: the sandbox's image has no interpreter for the language. The request
  is fine; the agent's configuration lacks something an operator can add (another image), and
  the distinct code lets the gateway answer exactly as it does for the in-process runtime.
* UNAVAILABLE: the sandbox failed before Started (the code did not run; retry elsewhere).
  A draining agent refuses calls with UNAVAILABLE too: gRPC's graceful stop closes the
  listener and sends GOAWAY (see server.py).
* INTERNAL: the sandbox failed after Started (the code may have run; never retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid

import grpc
import structlog

from .execution import ExecutionRequest, ExecutionResult
from .images import LanguageNotInImage
from .metrics import Metrics, result_label
from .proto import agent_pb2 as pb
from .proto import agent_pb2_grpc
from .proto.convert import STARTED, event_to_proto, request_from_proto
from .runtime import RequestRejected, Runtime, UnknownSandbox

log = structlog.get_logger("baponi.service")

Failure = tuple[grpc.StatusCode, str]


class NodeAgentService(agent_pb2_grpc.NodeAgentServicer):
    """Execute and Status over one Runtime."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.started_at = time.monotonic()
        self.cpus = len(os.sched_getaffinity(0))

    async def Execute(self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        sandbox, execution = request_from_proto(request)
        execution = dataclasses.replace(execution, execution_id=execution.execution_id or uuid.uuid4().hex)
        with structlog.contextvars.bound_contextvars(
            execution_id=execution.execution_id, sandbox=sandbox, language=execution.language
        ):
            failure = await self._execute(sandbox, execution, context)
            if failure is not None:
                await context.abort(*failure)

    async def _execute(
        self, sandbox: str, request: ExecutionRequest, context: grpc.aio.ServicerContext
    ) -> Failure | None:
        """Stream one execution to the caller; the failure to report, if any."""
        started = False
        result: ExecutionResult | None = None

        async def on_start() -> None:
            nonlocal started
            started = True
            await context.write(STARTED)

        try:
            # aclosing: a cancelled call (the caller went away) destroys its sandbox right here.
            events = self.metrics.count(request.language, self.runtime.execute(sandbox, request, on_start=on_start))
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, ExecutionResult):
                        result = event
                    await context.write(event_to_proto(event))
        except UnknownSandbox as exc:
            return _rejected(grpc.StatusCode.NOT_FOUND, exc)
        except RequestRejected as exc:
            return _rejected(grpc.StatusCode.INVALID_ARGUMENT, exc)
        except LanguageNotInImage as exc:
            return _rejected(grpc.StatusCode.FAILED_PRECONDITION, exc)
        except asyncio.CancelledError:
            log.info("execution cancelled by the caller", started=started)
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is the sandbox's, reported by phase
            log.error("sandbox failed", started=started, error=str(exc), exc_info=True)
            if started:
                return grpc.StatusCode.INTERNAL, f"sandbox failed after the code started: {exc}"
            return grpc.StatusCode.UNAVAILABLE, f"sandbox failed before the code started (it did not run): {exc}"
        assert result is not None, "an execution always ends with a result"
        log.info(
            "execution finished",
            result=result_label(result),
            exit_code=result.exit_code,
            duration_ms=round(result.duration_ms, 2),
            cold_start=result.cold_start,
            stdout_bytes=result.stdout_bytes,
            stderr_bytes=result.stderr_bytes,
            error=result.error,
        )
        return None

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.AgentStatus:  # noqa: N802
        runtime = self.runtime
        return pb.AgentStatus(
            pools=[
                pb.PoolStatus(name=name, language=language, idle=p.idle, target=p.target, claims=p.claims, misses=p.misses)
                for (name, language), p in runtime.pools.items()
            ],
            running=runtime.running,
            load=runtime.running / self.cpus,
            # Runtime does not expose the spawner's cgroup version yet (asked for).
            cgroup_version=runtime.cgroup_version,
            uptime_seconds=time.monotonic() - self.started_at,
        )


def _rejected(code: grpc.StatusCode, exc: Exception) -> Failure:
    log.info("execution rejected", code=code.name, reason=str(exc))
    return code, str(exc)
