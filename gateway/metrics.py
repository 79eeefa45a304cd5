"""Prometheus metrics of one gateway, in a registry of its own (so apps in one process don't mix).

Requests are labelled by route template, never by raw path, to keep the label set bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """`also`: more registries served on the same /metrics (the embedded node agent's)."""

    def __init__(self, also: Sequence[CollectorRegistry] = ()) -> None:
        self.registry = CollectorRegistry()
        self.also = list(also)
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.executions = Histogram(
            "execution_duration_seconds",
            "Executions from admission to result, by language and outcome (ok, error_exit, failed)",
            ["language", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_execution(self, language: str, outcome: str, seconds: float) -> None:
        self.executions.labels(language, outcome).observe(seconds)

    def response(self) -> Response:
        exposition = b"".join(generate_latest(registry) for registry in (self.registry, *self.also))
        return Response(exposition, media_type=CONTENT_TYPE_LATEST)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Counts every HTTP answer, errors that escape the app included (as 500)."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = "499"  # nothing was answered: the client went away first

            async def send_counted(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = str(message["status"])
                await send(message)

            try:
                await app(scope, receive, send_counted)
            except Exception:
                if status == "499":
                    status = "500"  # the server's error middleware answers it
                raise
            finally:
                self.requests.labels(getattr(scope.get("route"), "path", "unmatched"), status).inc()

        return counted
