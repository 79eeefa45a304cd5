"""`baponi serve`: the gateway and one node agent on this machine, with embedded defaults.

The agent runs as a child process behind gRPC on a Unix socket, exactly as it would on a
cluster node: if it dies (even mid-call) the gateway answers that call with an error and
this process starts a new agent, so the next call works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
import uvicorn

from nodeagent.resources import load_documents, sandbox_configs

from .agents import AgentClient, AgentPool, AgentUnavailable
from .app import create_app
from .settings import Settings
from .store import Store, open_store

log = structlog.get_logger("baponi.serve")

DEFAULT_DATA_DIR = "/var/lib/baponi"
BOOTSTRAP_KEY_ENV = "BAPONI_BOOTSTRAP_API_KEY"
_AGENT_START_TIMEOUT_S = 120.0
_AGENT_STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    config: Path | None = None
    database_url: str | None = None


class AgentProcess:
    """The local node agent: started, watched, restarted when it dies, drained on stop."""

    def __init__(self, options: ServeOptions) -> None:
        self.address = f"unix://{options.data_dir / 'agent.sock'}"
        self._argv = [
            sys.executable, "-m", "nodeagent.cli", "serve", "--address", self.address,
            "--data-dir", str(options.data_dir / "agent"), "--die-with-parent",
        ]
        if options.config is not None:
            self._argv += ["--config", str(options.config)]
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(*self._argv, stdin=asyncio.subprocess.DEVNULL)
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("node agent exited; starting a new one", exit_code=code, restart_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            self._process = await asyncio.create_subprocess_exec(*self._argv, stdin=asyncio.subprocess.DEVNULL)

    async def stop(self) -> None:
        """SIGTERM: the agent refuses new calls, lets running ones finish, then exits."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), _AGENT_STOP_GRACE_S + 5)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()


async def wait_for_agent(client: AgentClient, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await client.status()
            return
        except AgentUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise OSError(f"the node agent did not come up within {timeout:g} s") from None
            await asyncio.sleep(0.1)


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
        sandboxes = {config.name: config for config in sandbox_configs(documents)}
        options.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(options.data_dir, 0o711)
        store = await open_store(options.database_url, options.data_dir)
        agent = AgentProcess(options)
        client: AgentClient | None = None
        try:
            new_secret = await ensure_first_key(store, dict(os.environ))
            settings = Settings.load(options.data_dir)
            await agent.start()
            client = AgentClient(agent.address)
            await wait_for_agent(client, _AGENT_START_TIMEOUT_S)

            async def ready() -> bool:
                try:
                    await client.status()
                    return True
                except AgentUnavailable:
                    return False

            app = create_app(store=store, executor=AgentPool([client]), sandboxes=sandboxes, settings=settings, ready=ready)
            server = _HttpServer(
                uvicorn.Config(app, host=options.host, port=options.port, log_config=None, access_log=False)
            )
            _announce(options, new_secret)
            await server.serve()
        finally:
            await agent.stop()
            if client is not None:
                await client.close()
            await store.close()


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
