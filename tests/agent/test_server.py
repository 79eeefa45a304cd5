"""The agent as a server: Status, health, metrics, and its life on SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.agents import AgentClient, AgentPool, AgentUnavailable
from nodeagent.execution import ExecutionRequest
from nodeagent.server import AgentServer

from .conftest import SERVING, AgentProcess, collect, health, sandbox_processes, total_claims, wait_until


async def test_status_reports_pools_and_load(agent: AgentServer, client: AgentClient) -> None:
    status = await client.status()
    pools = {(p.name, p.language): p for p in status.pools}
    assert set(pools) == {(name, lang) for name in ("default", "cold") for lang in ("python", "node", "bash")}
    assert (pools["default", "python"].target, pools["cold", "python"].target) == (1, 0)
    assert status.running == 0 and status.load == 0
    assert status.cgroup_version in (1, 2)
    assert status.uptime_seconds > 0


async def test_health_is_serving_once_warm(agent: AgentServer) -> None:
    assert await health(agent.address) == SERVING


def _samples(address: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


async def test_metrics_count_executions(agent: AgentServer, client: AgentClient) -> None:
    await collect(client.execute("default", ExecutionRequest("print('x' * 9)", timeout=10)))
    await collect(client.execute("cold", ExecutionRequest("exit 4", "bash", timeout=10)))
    samples = await asyncio.to_thread(_samples, agent.metrics_address)
    executions = lambda language, result: samples.get(  # noqa: E731
        ("baponi_agent_executions_total", frozenset({("language", language), ("result", result)})), 0
    )
    assert executions("python", "success") >= 1 and executions("bash", "error") >= 1
    assert samples[("baponi_agent_output_bytes_total", frozenset({("stream", "stdout")}))] >= 10
    assert samples[("baponi_agent_execution_duration_seconds_count", frozenset({("language", "bash")}))] >= 1
    assert samples[("baponi_agent_cold_starts_total", frozenset({("language", "bash")}))] >= 1
    assert ("baponi_agent_pool_idle", frozenset({("pool", "default/python")})) in samples
    assert samples[("baponi_agent_running", frozenset())] == 0


async def test_sigterm_drains_running_calls_and_refuses_new_ones(agent_process: Callable[..., AgentProcess]) -> None:
    process = agent_process(grace=10)
    await process.start()
    client = AgentClient(process.address)
    try:
        secret = f"s3cret-{uuid.uuid4().hex}"
        request = ExecutionRequest('sleep 2; echo "$SECRET"', "bash", timeout=30, env={"SECRET": secret}, execution_id="drain-1")
        running = asyncio.ensure_future(collect(client.execute("default", request)))
        await wait_until(lambda: _running(client), 5, "the call running on the agent")
        process.signal(signal.SIGTERM)
        await wait_until(lambda: _not_serving(process.address), 5, "health no longer SERVING")
        with pytest.raises(AgentUnavailable) as refused:
            await collect(client.execute("default", ExecutionRequest("echo hi", "bash", timeout=10)))
        assert not refused.value.started
        stdout, result = await running
        assert (stdout, result.exit_code) == (f"{secret}\n", 0)
        assert await process.wait(timeout=process.grace) == 0
    finally:
        await client.close()
    # Its logs: JSON lines (gRPC's C core may add lines of its own) naming the call, never its
    # code, environment values or output.
    text = process.log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    finished = [r for r in records if r["event"] == "execution finished"]
    assert [(r["execution_id"], r["result"]) for r in finished] == [("drain-1", "success")]
    assert secret not in text and "sleep 2" not in text


async def _running(client: AgentClient) -> bool:
    return (await client.status()).running == 1


async def _not_serving(address: str) -> bool:
    return await health(address) != SERVING


async def test_killed_agent_fails_the_call_once_and_leaves_nothing(
    agent_process: Callable[..., AgentProcess], client: AgentClient
) -> None:
    """SIGKILL mid-call: the caller learns the code had started, the pool does not run it again
    on the other (live) agent, the sandboxes die with their control sockets, and a new agent on
    the same data directory serves the next call."""
    process = agent_process()
    await process.start()
    doomed = AgentClient(process.address)
    pool = AgentPool([doomed, client])
    claims_elsewhere = total_claims(await client.status())
    try:
        call = asyncio.ensure_future(
            collect(pool.execute("default", ExecutionRequest("sleep 30", "bash", timeout=60), prefer=process.address))
        )
        await wait_until(lambda: _running(doomed), 5, "the call running on the doomed agent")
        assert any(p.uid == 201_000 for p in sandbox_processes(process.cgroup_parent))  # the code, as uid 1000 inside
        process.kill()
        with pytest.raises(AgentUnavailable) as broken:
            await asyncio.wait_for(call, 5)
        assert broken.value.started
        assert total_claims(await client.status()) == claims_elsewhere
        await wait_until(lambda: not sandbox_processes(process.cgroup_parent), 2, "no sandbox process of the killed agent")
    finally:
        await doomed.close()

    await process.start()
    revived = AgentClient(process.address)
    try:
        stdout, result = await collect(revived.execute("default", ExecutionRequest("print(6 * 7)", timeout=10)))
        assert (stdout, result.exit_code) == ("42\n", 0)
    finally:
        await revived.close()
