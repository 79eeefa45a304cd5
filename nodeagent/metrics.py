"""Prometheus metrics of one node agent, in a registry of its own.

A registry per agent (not prometheus_client's global one) keeps several agents in one process
(tests, one-machine mode) from sharing counters, and keeps library metrics out of the scrape.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from .execution import ExecutionResult, OutputChunk, Stream
from .runtime import REJECTIONS, Runtime

Event = OutputChunk | ExecutionResult

# Warm calls take milliseconds, cold ones tens to hundreds, the longest run for minutes.
_DURATION_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def result_label(result: ExecutionResult | None) -> str:
    """How an execution ended, as the `result` label; None means the sandbox failed."""
    if result is None or result.error is not None:
        return "sandbox_error"
    if result.timed_out:
        return "timeout"
    if result.oom_killed:
        return "oom"
    if result.signal is not None:
        return "signal"
    return "success" if result.exit_code == 0 else "error"


class Metrics:
    """The agent's counters; `bind` attaches the gauges that read a runtime's live state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        common = {"namespace": "baponi", "subsystem": "agent", "registry": self.registry}
        self.executions = Counter("executions", "Executions by how they ended", ["language", "result"], **common)
        self.duration = Histogram(
            "execution_duration_seconds", "Time from receiving a call to its result, in the agent",
            ["language"], buckets=_DURATION_BUCKETS, **common,
        )
        self.cold_starts = Counter("cold_starts", "Executions that found no warm sandbox", ["language"], **common)
        self.output_bytes = Counter("output_bytes", "Output bytes streamed to callers", ["stream"], **common)
        self.pool_idle = Gauge("pool_idle", "Idle warm sandboxes per pool", ["pool"], **common)
        self.running = Gauge("running", "Executions in progress", **common)
        self._http: WSGIServer | None = None

    def bind(self, runtime: Runtime) -> None:
        """Read pool sizes and running executions from `runtime` at scrape time (after start)."""
        for pool in runtime.pools.values():
            self.pool_idle.labels(pool=pool.key).set_function(lambda pool=pool: pool.idle)
        self.running.set_function(lambda: runtime.running)

    def output(self, stream: Stream, data: bytes) -> None:
        self.output_bytes.labels(stream=stream).inc(len(data))

    def finished(self, language: str, result: ExecutionResult | None, seconds: float) -> None:
        """One execution that reached the sandbox ended, with a result or a sandbox failure."""
        self.executions.labels(language=language, result=result_label(result)).inc()
        self.duration.labels(language=language).observe(seconds)
        if result is not None and result.cold_start:
            self.cold_starts.labels(language=language).inc()

    async def count(self, language: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """One execution's events, passed on and counted: output bytes, then how it ended. A
        refused call is not an execution; one cut short by its caller is not counted."""
        began = time.monotonic()
        result: ExecutionResult | None = None
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    if isinstance(event, OutputChunk):
                        self.output(event.stream, event.data)
                    else:
                        result = event
                    yield event
        except REJECTIONS:
            raise
        except Exception:
            self.finished(language, None, time.monotonic() - began)
            raise
        self.finished(language, result, time.monotonic() - began)

    def serve(self, address: str) -> tuple[str, int]:
        """Serve /metrics over HTTP on `host:port` in a daemon thread; returns the bound address."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry=self.registry)
        self._http = server
        return server.server_address[0], server.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
