"""AgentPool: least-loaded choice, and a retry only when the code certainly did not run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.agents import AgentClient, AgentPool, AgentUnavailable
from nodeagent.execution import ExecutionRequest
from nodeagent.isolation import cgroups
from nodeagent.server import AgentServer

from .conftest import AgentProcess, collect, sandbox_processes, total_claims, wait_until


async def test_call_to_a_dead_agent_lands_on_a_live_one(agent_root: Path, client: AgentClient) -> None:
    dead = AgentClient(f"unix://{agent_root}/nobody-listens.sock")
    pool = AgentPool([dead, client])
    claims = total_claims(await client.status())
    try:
        stdout, result = await collect(pool.execute("default", ExecutionRequest("print('once')", timeout=10), prefer=dead.address))
        assert (stdout, result.exit_code) == ("once\n", 0)
        assert total_claims(await client.status()) == claims + 1
        assert not dead.available and client.available
    finally:
        await dead.close()


async def test_no_live_agent_is_unavailable_before_start(agent_root: Path) -> None:
    dead = [AgentClient(f"unix://{agent_root}/nobody-{i}.sock") for i in range(2)]
    try:
        with pytest.raises(AgentUnavailable) as failed:
            await collect(AgentPool(dead).execute("default", ExecutionRequest("print(1)", timeout=10)))
        assert not failed.value.started
        assert all(c.address in failed.value.message for c in dead)
    finally:
        for c in dead:
            await c.close()


async def test_busy_agent_is_passed_over(agent: AgentServer) -> None:
    """Two clients (of one agent, so the choice is visible): the second call goes to the idle one."""
    busy, idle = AgentClient(agent.address), AgentClient(agent.address)
    pool = AgentPool([busy, idle])
    sleep = ExecutionRequest("sleep 0.5", "bash", timeout=10)
    try:
        await pool.refresh()
        first = asyncio.ensure_future(collect(pool.execute("default", sleep)))
        await wait_until(lambda: busy.in_flight == 1, 5, "the first call in flight on the first client")
        second = asyncio.ensure_future(collect(pool.execute("default", sleep)))
        await wait_until(lambda: idle.in_flight == 1, 5, "the second call in flight on the other client")
        assert busy.in_flight == 1
        await asyncio.gather(first, second)
        assert busy.load == idle.load == 0
    finally:
        await busy.close()
        await idle.close()


async def test_sandbox_failure_before_start_is_retried_elsewhere(
    agent_process: Callable[..., AgentProcess], client: AgentClient
) -> None:
    """An agent that cannot start sandboxes (its launcher cannot be executed) answers
    UNAVAILABLE before Started; the pool then runs the code on the other agent, once."""
    process = agent_process()
    await process.start()
    [spawner] = process.children(b"baponi-spawner")
    for binary in (process.data_dir / "bin").glob("baponi-launch-*"):
        binary.chmod(0)  # not even root may exec a file without an execute bit
    broken, fresh = AgentClient(process.address), AgentClient(process.address)
    request = ExecutionRequest("echo once", "bash", timeout=10)  # bash: never forked from a zygote
    try:
        with pytest.raises(AgentUnavailable) as failed:
            await collect(broken.execute("cold", request))
        assert not failed.value.started
        assert "sandbox failed before the code started" in failed.value.message
        fds = len(os.listdir(f"/proc/{spawner}/fd"))
        for _ in range(3):  # each failed start gives back every fd it took
            with pytest.raises(AgentUnavailable):
                await collect(broken.execute("cold", request))
        assert len(os.listdir(f"/proc/{spawner}/fd")) == fds
        claims = total_claims(await client.status())
        stdout, _ = await collect(AgentPool([fresh, client]).execute("cold", request, prefer=fresh.address))
        assert stdout == "once\n"
        assert total_claims(await client.status()) == claims + 1
        assert not fresh.available
    finally:
        await broken.close()
        await fresh.close()
        process.kill()
        await wait_until(lambda: not sandbox_processes(process.cgroup_parent), 5, "no sandbox process of the agent")
        # The orphaned spawner clears the agent's cgroups itself; wait for it, then sweep.
        await wait_until(lambda: not Path(f"/proc/{spawner}").exists(), 15, "the spawner gone")
        cgroups.detect(process.cgroup_parent).remove_all()
