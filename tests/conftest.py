"""Shared fixtures: one real node-agent runtime (spawner, cgroups, namespaces) per test session.

Everything here is real: tests run as root on a Linux host and every execution goes through
the same isolation a production call gets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk
from nodeagent.runtime import Runtime


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite needs root: it builds real namespaces and cgroups")


@dataclass
class Outcome:
    """What a caller of one execution sees."""

    stdout: str
    stderr: str
    result: ExecutionResult
    chunks: list[OutputChunk]

    @property
    def exit_code(self) -> int:
        return self.result.exit_code


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A data directory every sandbox uid can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="baponi-test-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# A small sandbox for most tests, and one with tight limits for the abuse tests.
DEFAULT = SandboxConfig(name="default", warm=2, max_timeout=120)
TIGHT = SandboxConfig(
    name="tight", cpu=0.5, pids_max=64, warm=0, output_limit=64 * 1024, tmp_bytes=8 << 20, home_bytes=8 << 20,
    max_timeout=30,
)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def runtime(data_dir: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(data_dir, [DEFAULT, TIGHT])
    await rt.start()
    await rt.wait_warm()
    yield rt
    await rt.close()


class Runner:
    """Runs code in the session's runtime and collects what the caller gets back."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, code: str, language: str = "python", *, sandbox: str = "default", **fields) -> Outcome:  # noqa: ANN003
        request = ExecutionRequest(code=code, language=language, **({"timeout": 30.0} | fields))
        chunks: list[OutputChunk] = []
        result = None
        async for event in self.runtime.execute(sandbox, request):
            if isinstance(event, OutputChunk):
                chunks.append(event)
            else:
                result = event
        assert result is not None, "an execution always ends with a result"
        join = lambda stream: b"".join(c.data for c in chunks if c.stream == stream).decode(errors="replace")  # noqa: E731
        return Outcome(join("stdout"), join("stderr"), result, chunks)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def run(runtime: Runtime) -> Runner:
    return Runner(runtime)
