"""Gateway fixtures: the app served by uvicorn on 127.0.0.1, running code in the session's real
node-agent runtime (tests/conftest.py) with a real store.

The store is SQLite unless a test asks for both backends with `@both_backends`; PostgreSQL is
this machine's server, in a database made for the test and dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.types import ASGIApp

from gateway.app import Readiness, create_app
from gateway.runs import Executor
from gateway.settings import Settings
from gateway.store import Store, open_store

from .postgres import postgres_database
from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk
from nodeagent.runtime import Runtime
from tests.conftest import DEFAULT, TIGHT

SANDBOXES = {config.name: config for config in (DEFAULT, TIGHT)}
both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """`app` on a free port of 127.0.0.1 (lifespan included) until the block ends; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class Gateway:
    """A served gateway: its URL, store and settings, a client, and API keys on demand."""

    def __init__(self, url: str, store: Store, settings: Settings) -> None:
        self.url, self.store, self.settings = url, store, settings
        self.client = httpx.AsyncClient(base_url=url, timeout=60)

    async def key(self, sandbox: str = "default", **limits: Any) -> str:
        """A new API key's secret (limits generous unless given)."""
        fields = {"env": {}, "max_concurrent": 8, "rate_per_minute": 600} | limits
        _, secret = await self.store.create_key("test", sandbox, **fields)
        return secret

    async def key_id(self, secret: str) -> str:
        key = await self.store.key_by_secret(secret)
        assert key is not None
        return key.id

    async def execute(self, secret: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        return await self.client.post(
            "/v1/sandbox/execute", json=body, headers={"Authorization": f"Bearer {secret}", **(headers or {})}
        )


@contextlib.asynccontextmanager
async def running_gateway(
    runtime: Runtime,
    database_url: str | None,
    data_dir: Path,
    executor: Executor | None = None,
    sandboxes: Mapping[str, SandboxConfig] = SANDBOXES,
    ready: Readiness | None = None,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """A gateway on its own store, served until the block ends; retries and polling made fast."""
    fast = {"webhook_backoff_s": 0.05, "webhook_poll_s": 0.2, "webhook_timeout_s": 5.0}
    config = Settings.load(data_dir, environ={}, **(fast | settings))
    store = await open_store(database_url, data_dir)
    app = create_app(store=store, executor=executor or runtime, sandboxes=sandboxes, settings=config, ready=ready)
    try:
        async with serve(app) as url:
            gateway = Gateway(url, store, config)
            try:
                yield gateway
            finally:
                await gateway.client.aclose()
    finally:
        await store.close()


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(backend: str) -> Iterator[str | None]:
    """None (SQLite in the data directory), or a PostgreSQL database of this test's own."""
    if backend == "sqlite":
        yield None
        return
    with postgres_database("baponi_gateway_test") as url:
        yield url


@pytest.fixture
def make_gateway(runtime: Runtime, database_url: str | None, tmp_path: Path) -> GatewayFactory:
    """A gateway of the test's own; the executor, sandboxes, readiness and settings may be replaced."""
    return functools.partial(running_gateway, runtime, database_url, tmp_path)


class SharedGateways:
    """One plain gateway per backend for the whole session, started when first asked for:
    most tests need only a key of their own, and keys share nothing (limits, threads, audit)."""

    def __init__(self, runtime: Runtime, directory: Path) -> None:
        self.runtime, self.directory = runtime, directory
        self.stack = contextlib.AsyncExitStack()
        self.started: dict[str, Gateway] = {}

    async def get(self, backend: str) -> Gateway:
        if backend not in self.started:
            url = None if backend == "sqlite" else self.stack.enter_context(postgres_database("baponi_gateway_test"))
            data_dir = self.directory / backend
            data_dir.mkdir()
            self.started[backend] = await self.stack.enter_async_context(running_gateway(self.runtime, url, data_dir))
        return self.started[backend]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_gateways(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SharedGateways]:
    shared = SharedGateways(runtime, tmp_path_factory.mktemp("gateways"))
    async with shared.stack:
        yield shared


@pytest_asyncio.fixture
async def gateway(shared_gateways: SharedGateways, backend: str) -> Gateway:
    return await shared_gateways.get(backend)


@pytest_asyncio.fixture
async def secret(gateway: Gateway) -> str:
    return await gateway.key()


class FailingExecutor:
    """Raises `error` instead of running anything; with `started`, only after handing the code
    over and producing some output (as an agent that dies mid-call does)."""

    def __init__(self, error: BaseException, *, started: bool = False) -> None:
        self.error, self.started = error, started

    async def execute(
        self, sandbox: str, request: ExecutionRequest, *, on_start: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        if self.started:
            if on_start is not None:
                await on_start()
            yield OutputChunk("stdout", b"partial\n")
        raise self.error


# What every answer of POST /v1/sandbox/execute holds.
FIELDS = {
    "success",
    "stdout",
    "stderr",
    "exit_code",
    "execution_id",
    "duration_ms",
    "stdout_truncated",
    "stderr_truncated",
    "timed_out",
    "oom_killed",
    "signal",
    "sandbox_error",
}


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """The message, once the status, code and shape are checked."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return body["error"]["message"]
