"""`baponi serve`: the gateway and a node agent on this machine, with embedded defaults.

The node agent's runtime runs in this process (its spawner, which holds the sandboxes, is a
child): a local gRPC hop would cost each call about 2 ms. If the spawner dies, even mid-call,
that call is answered with an error and the next one starts a new spawner. With `--agent`
the gateway sends calls to node agents served elsewhere over gRPC instead, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from nodeagent.config import SandboxConfig
from nodeagent.metrics import Metrics as AgentMetrics
from nodeagent.resources import load_documents, sandbox_configs
from nodeagent.runtime import Runtime

from .agents import AgentClient, AgentPool, EmbeddedAgent
from .app import Readiness, create_app
from .runs import Executor
from .settings import Settings
from .store import Store, open_store

DEFAULT_DATA_DIR = "/var/lib/baponi"
BOOTSTRAP_KEY_ENV = "BAPONI_BOOTSTRAP_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    config: Path | None = None
    database_url: str | None = None
    agents: tuple[str, ...] = ()  # gRPC addresses of node agents to use instead of the embedded one


@dataclass(frozen=True)
class Agents:
    """What runs the code, whether it can take work (None: always, once started), and the
    metrics registries it adds to /metrics."""

    executor: Executor
    ready: Readiness | None
    registries: tuple[CollectorRegistry, ...]


@contextlib.asynccontextmanager
async def embedded_agent(data_dir: Path, configs: list[SandboxConfig]) -> AsyncIterator[Agents]:
    """The node agent's runtime in this process; its spawner (a child process) holds the
    sandboxes and stops them if this process dies, even by SIGKILL."""
    runtime = Runtime(data_dir, configs)
    await runtime.start()
    metrics = AgentMetrics()
    metrics.bind(runtime)
    try:
        yield Agents(EmbeddedAgent(runtime, metrics), ready=None, registries=(metrics.registry,))
    finally:
        await runtime.close()


@contextlib.asynccontextmanager
async def remote_agents(addresses: Sequence[str]) -> AsyncIterator[Agents]:
    """Node agents served elsewhere (`baponi-agent serve`), reached over gRPC; ready while one answers."""
    clients = [AgentClient(address) for address in addresses]
    pool = AgentPool(clients)

    async def ready() -> bool:
        await pool.refresh()
        return any(client.available for client in clients)

    try:
        yield Agents(pool, ready=ready, registries=())
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def ensure_first_key(store: Store, environ: dict[str, str]) -> str | None:
    """The bootstrap key from the environment, or a new key on a first start (returned to
    be shown once); None when keys exist already."""
    if secret := environ.get(BOOTSTRAP_KEY_ENV):
        await store.create_key("bootstrap", "default", secret=secret)
        return None
    if await store.list_keys():
        return None
    _key, secret = await store.create_key("first", "default")
    return secret


class _HttpServer(uvicorn.Server):
    """uvicorn, stopping on SIGTERM or SIGINT without re-raising the signal afterwards, so a
    drained `baponi serve` exits 0 (a second SIGINT still forces the exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _stop(self, sig: int) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


class LocalServer:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options

    async def run(self) -> None:
        options = self.options
        documents = load_documents(options.config) if options.config else []
        configs = sandbox_configs(documents)
        options.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(options.data_dir, 0o711)
        # Bound first: a taken port must fail the start before a key is made or shown, or a
        # sandbox started.
        listener = listen(options.host, options.port)
        store = await open_store(options.database_url, options.data_dir)
        try:
            new_secret = await ensure_first_key(store, dict(os.environ))
            settings = Settings.load(options.data_dir)
            agents = remote_agents(options.agents) if options.agents else embedded_agent(options.data_dir / "agent", configs)
            async with agents as running:
                app = create_app(
                    store=store,
                    executor=running.executor,
                    sandboxes={config.name: config for config in configs},
                    settings=settings,
                    ready=running.ready,
                    metrics_also=running.registries,
                )
                server = _HttpServer(
                    uvicorn.Config(app, host=options.host, port=options.port, log_config=None, access_log=False)
                )
                _announce(options, new_secret)
                await server.serve(sockets=[listener])
        finally:
            await store.close()
            listener.close()


def listen(host: str, port: int) -> socket.socket:
    """The HTTP listener. IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on
    connections whose socket says TCP, and without it every answer written in two sends
    waited ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host") from None
    return listener


def _announce(options: ServeOptions, new_secret: str | None) -> None:
    url = f"http://{options.host}:{options.port}"
    print(f"Baponi is serving on {url} (data in {options.data_dir})", flush=True)
    if new_secret:
        print(f"API key, shown once (only its hash is kept): {new_secret}", flush=True)
        print(
            f"Try: curl -s -X POST {url}/v1/sandbox/execute -H 'Authorization: Bearer {new_secret}' "
            "-H 'Content-Type: application/json' -d '{\"code\": \"print(sum(range(100)))\"}'",
            flush=True,
        )
