"""The node agent as a server: a Runtime behind gRPC (NodeAgent and Health) plus metrics.

Health is NOT_SERVING until the warm pools are full, so a balancer sends calls only to an
agent that answers them in milliseconds. On SIGTERM the agent drains: NOT_SERVING, gRPC's
graceful stop closes the listener (new calls fail with UNAVAILABLE, which callers may retry
elsewhere) and waits up to the grace period for running calls; calls still running then are
cancelled, which destroys their sandboxes. Then the runtime is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio

from .metrics import Metrics
from .proto import CHANNEL_OPTIONS, agent_pb2, agent_pb2_grpc
from .runtime import Runtime
from .service import NodeAgentService

log = structlog.get_logger("baponi.server")

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name
_WARM_TIMEOUT_S = 60.0


class AgentServer:
    """One node agent: owns the runtime's lifecycle, the gRPC server and the metrics endpoint."""

    def __init__(self, runtime: Runtime, address: str, *, metrics_address: str | None = None, grace: float = 30.0) -> None:
        self.runtime = runtime
        self.address = address  # `unix:///path` or `host:port`; port 0 is replaced by the bound one
        self.metrics_address = metrics_address
        self.grace = grace
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._warming: asyncio.Task | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        agent_pb2_grpc.add_NodeAgentServicer_to_server(NodeAgentService(self.runtime, self.metrics), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self._bind(server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.runtime.start()
        try:
            self.metrics.bind(self.runtime)
            if self.metrics_address is not None:
                host, port = self.metrics.serve(self.metrics_address)
                self.metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            await server.start()
        except BaseException:
            self.metrics.close()
            await self.runtime.close()
            raise
        self._server = server
        self._warming = asyncio.ensure_future(self._serve_when_warm())
        log.info("agent listening", address=self.address, metrics=self.metrics_address)

    def _bind(self, server: grpc.aio.Server) -> None:
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address}: {exc}") from None
        if not self.address.startswith("unix:"):
            host, _, _ = self.address.rpartition(":")
            self.address = f"{host}:{port}"

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in (OVERALL_HEALTH, SERVICE_NAME):
            await self.health.set(service, status)

    async def _serve_when_warm(self) -> None:
        while True:
            try:
                await self.runtime.wait_warm(_WARM_TIMEOUT_S)
                break
            except TimeoutError as exc:
                log.warning("warm pools not full yet; health stays NOT_SERVING", reason=str(exc))
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("agent serving", pools=len(self.runtime.pools))

    async def stop(self) -> None:
        """Drain, then close the runtime; calls still running after the grace period are cancelled."""
        assert self._server is not None, "start() first"
        log.info("agent draining", grace_s=self.grace, running=self.runtime.running)
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.grace)
        self.metrics.close()
        await self.runtime.close()
        log.info("agent stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
            await stop.wait()
            await self.stop()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
