"""Runtimes of a test's own, the host's view of their sandboxes' processes, and calls made to
start warm or cold.

Tests that need a pool of their own configuration build a Runtime of their own
(`own_runtime`), so the session runtime's pools stay as other tests expect them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nodeagent.config import SandboxConfig
from nodeagent.images import Image
from nodeagent.runtime import Runtime

WAIT_S = 60.0  # the machine is shared and loaded: waits are generous, never assumed short
SANDBOX_UIDS = range(200_000, 200_000 + 65_536)


@contextlib.asynccontextmanager
async def own_runtime(*configs: SandboxConfig, images: dict[str, Image] | None = None) -> AsyncIterator[Runtime]:
    """A started Runtime with a data directory made like the `data_dir` fixture; closed after."""
    path = Path(tempfile.mkdtemp(prefix="baponi-test-", dir="/tmp"))
    path.chmod(0o711)
    runtime = Runtime(path, list(configs), images=images)
    try:
        await runtime.start()
        yield runtime
    finally:
        await runtime.close()
        shutil.rmtree(path, ignore_errors=True)


async def wait_until(predicate, what: str, timeout: float = WAIT_S) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Proc:
    """A host process, with its start time so a reused pid is never taken for it."""

    pid: int
    start: str
    state: str
    ppid: int
    uid: int
    cgroups: str


def _proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": fields 3.. of proc_pid_stat(5)
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return Proc(pid, fields[19], fields[0], int(fields[1]), uid, cgroups)


def processes() -> list[Proc]:
    found = (_proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None]


def still_there(process: Proc) -> Proc | None:
    """The process as it is now (a zombie included), or None once it is gone."""
    now = _proc(process.pid)
    return now if now is not None and now.start == process.start else None


def alive(process: Proc) -> bool:
    return still_there(process) is not None


def supervisor_of(init_pid: int) -> Proc:
    """The process supervising the sandbox (the spawner): the nearest ancestor of its init
    running as host root (every process of the sandbox itself runs under a host uid of the
    sandbox range)."""
    process = _proc(init_pid)
    while process is not None and process.uid in SANDBOX_UIDS:
        process = _proc(process.ppid)
    assert process is not None and process.uid == 0, f"no supervisor above sandbox init {init_pid}"
    return process


def chain_of(init_pid: int) -> list[Proc]:
    """The sandbox's processes from its init up to its supervisor: init, and the launcher
    process above it (A), which a sandbox cloned by a zygote has not."""
    chain, process = [], _proc(init_pid)
    while process is not None and process.uid in SANDBOX_UIDS:
        chain.append(process)
        process = _proc(process.ppid)
    assert len(chain) in (1, 2), f"sandbox init {init_pid}: expected init and at most its launcher, found {chain}"
    return chain


def in_cgroup_subtree(parent: str) -> list[Proc]:
    return [p for p in processes() if f"/{parent}/" in p.cgroups]


def python_pool(runtime: Runtime, config: str = "default"):  # noqa: ANN201
    return runtime.pools[(config, "python")]


# A harmless variable each interpreter reads at start-up: setting it forces an exec sandbox.
COLD_ENV = {"python": {"PYTHONDONTWRITEBYTECODE": "1"}, "node": {"NODE_DISABLE_COLORS": "1"}}
MODES = ("warm", "cold")


def call_env(language: str, mode: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The call's own environment: a cold start is forced with the language's start-up variable."""
    return {**(COLD_ENV.get(language, {}) if mode == "cold" else {}), **(env or {})}


async def in_sandbox(run, runtime, code: str, language: str, mode: str, env: dict[str, str] | None = None, **fields):  # noqa: ANN001, ANN003
    """Run in a sandbox started as `mode` says ("startup": `env` itself forces a cold start),
    and check it really started so."""
    if mode == "warm":
        await runtime.pools[("default", language)].wait_full(WAIT_S)
    outcome = await run(code, language, env=call_env(language, mode, env), **fields)
    assert outcome.result.error is None, outcome.result.error
    assert outcome.result.cold_start == (mode != "warm"), f"expected a {mode} start"
    return outcome
