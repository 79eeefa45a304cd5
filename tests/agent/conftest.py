"""A real node agent over real gRPC: in-process for most tests, a child process where a test
signals or kills it. Sockets and data live in 0711 temp dirs (sandbox uids must traverse them).
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.agents import AgentClient, Event
from nodeagent import logs
from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionResult, OutputChunk
from nodeagent.runtime import Runtime
from nodeagent.server import AgentServer

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_UIDS = range(200_000, 200_000 + 65_536)
SERVING = health_pb2.HealthCheckResponse.SERVING
# `cold` has no warm pool: its sandboxes exist only while a call runs.
CONFIGS = [SandboxConfig(name="default", warm=1, max_timeout=60), SandboxConfig(name="cold", warm=0, max_timeout=60)]
AGENT_YAML = """\
apiVersion: baponi.dev/v1alpha1
kind: Sandbox
metadata: {name: default}
spec: {warm: 1, maxTimeout: 60}
---
apiVersion: baponi.dev/v1alpha1
kind: Sandbox
metadata: {name: cold}
spec: {warm: 0, maxTimeout: 60}
"""


def traversable_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="baponi-agent-test-", dir="/tmp"))
    path.chmod(0o711)
    return path


async def wait_until(predicate: Callable[[], object | Awaitable[object]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def health(address: str) -> int | None:
    """The agent's overall health status, or None when it cannot be reached."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return None
        return reply.status


@dataclass(frozen=True)
class SandboxProcess:
    pid: int
    uid: int
    cgroup: str  # the sandbox's cgroup (a slot the spawner reuses) under its agent's subtree
    cmdline: bytes


def sandbox_processes(cgroup_parent: str) -> list[SandboxProcess]:
    """Processes of sandbox uids in one agent's cgroup subtree (other agents may run too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = entry.stat().st_uid
            lines = (entry / "cgroup").read_text().splitlines()
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ours = [line.split(":", 2)[2] for line in lines if f"/{cgroup_parent}/" in line]
        if uid in SANDBOX_UIDS and ours:
            found.append(SandboxProcess(int(entry.name), uid, ours[0], cmdline))
    return found


async def collect(events: AsyncIterator[Event]) -> tuple[str, ExecutionResult]:
    """Stdout of an execution, and its result."""
    stdout = b""
    result = None
    async for event in events:
        if isinstance(event, OutputChunk):
            stdout += event.data if event.stream == "stdout" else b""
        else:
            result = event
    assert result is not None
    return stdout.decode(), result


def total_claims(status) -> int:  # noqa: ANN001 - an AgentStatus message
    return sum(pool.claims for pool in status.pools)


@pytest.fixture(scope="session")
def agent_root() -> Iterator[Path]:
    path = traversable_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent(agent_root: Path) -> AsyncIterator[AgentServer]:
    logs.configure("info")  # as `baponi-agent serve` does: JSON lines, tracebacks without locals
    server = AgentServer(
        Runtime(agent_root / "data", CONFIGS), f"unix://{agent_root}/agent.sock", metrics_address="127.0.0.1:0", grace=5
    )
    await server.start()
    await wait_until(lambda: _is_serving(server.address), 30, "agent SERVING")
    yield server
    await server.stop()


async def _is_serving(address: str) -> bool:
    return await health(address) == SERVING


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(agent: AgentServer) -> AsyncIterator[AgentClient]:
    client = AgentClient(agent.address)
    yield client
    await client.close()


class AgentProcess:
    """`baponi-agent serve` as a child process, for tests that signal or kill the agent."""

    def __init__(self, root: Path, grace: float = 10.0) -> None:
        self.root = root
        self.address = f"unix://{root}/agent.sock"
        self.data_dir = root / "data"
        self.grace = grace
        self.log = root / "agent.log"
        self.cgroup_parent = Runtime(self.data_dir, []).cgroup_parent
        (root / "sandboxes.yaml").write_text(AGENT_YAML)
        self.process: subprocess.Popen | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nodeagent.cli", "serve", "--address", self.address,
                 "--data-dir", str(self.data_dir), "--config", str(self.root / "sandboxes.yaml"), "--grace", str(self.grace)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        try:
            await wait_until(lambda: _is_serving(self.address), 30, "agent process SERVING")
        except TimeoutError:
            raise AssertionError(f"agent did not start; its log:\n{self.log.read_text()}") from None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def children(self, marker: bytes) -> list[int]:
        """Child processes of the agent whose command line holds `marker`."""
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        pids = [int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
        return [pid for pid in pids if marker in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def agent_process() -> Iterator[Callable[..., AgentProcess]]:
    """Makes agent processes (each in its own temp dir) and kills whatever is left of them."""
    made: list[AgentProcess] = []

    def make(root: Path | None = None, grace: float = 10.0) -> AgentProcess:
        process = AgentProcess(root or traversable_dir(), grace)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()
    for root in {p.root for p in made}:
        shutil.rmtree(root, ignore_errors=True)
