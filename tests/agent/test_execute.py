"""Execute over real gRPC against an in-process agent: events, their order, errors, cancellation."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest

from gateway.agents import AgentClient, AgentRejected
from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk
from nodeagent.proto import agent_pb2 as pb
from nodeagent.proto import agent_pb2_grpc
from nodeagent.server import AgentServer

from .conftest import collect, sandbox_processes, wait_until


async def test_execute_streams_started_output_finished(agent: AgentServer) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        call = agent_pb2_grpc.NodeAgentStub(channel).Execute(
            pb.ExecuteRequest(sandbox="default", code="print(sum(range(100)))", language="python", timeout_seconds=10)
        )
        events = [event async for event in call]
    assert [e.WhichOneof("event") for e in events] == ["started", "output", "finished"]
    assert events[1].output == pb.Output(stream=pb.Output.STDOUT, data=b"4950\n")
    finished = events[2].finished
    assert finished.exit_code == 0 and not finished.timed_out and finished.stdout_bytes == 5
    assert not finished.HasField("signal") and not finished.HasField("error") and not finished.HasField("home")


async def test_client_yields_what_the_runtime_yields(client: AgentClient) -> None:
    request = ExecutionRequest(code="import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)", timeout=10)
    seen: list[object] = []

    async def on_start() -> None:
        seen.append("started")

    seen += [event async for event in client.execute("default", request, on_start=on_start)]
    assert seen[0] == "started"
    events = seen[1:]
    assert all(isinstance(e, OutputChunk) for e in events[:-1])
    joined = {s: b"".join(e.data for e in events[:-1] if e.stream == s) for s in ("stdout", "stderr")}
    assert joined == {"stdout": b"out\n", "stderr": b"err\n"}
    result = events[-1]
    assert isinstance(result, ExecutionResult)
    assert (result.exit_code, result.success, result.signal, result.error) == (3, False, None, None)


async def test_output_streams_as_the_code_produces_it(client: AgentClient) -> None:
    request = ExecutionRequest(code="import time\nprint(1, flush=True)\ntime.sleep(1)\nprint(2)", timeout=10)
    stdout, first_line_at = b"", None
    async for event in client.execute("default", request):
        if isinstance(event, OutputChunk):
            stdout += event.data
            if first_line_at is None and stdout == b"1\n":  # a cold python may write "1" and "\n" apart
                first_line_at = time.monotonic()
        else:
            finished_at, result = time.monotonic(), event
    assert stdout == b"1\n2\n" and result.exit_code == 0
    assert first_line_at is not None and finished_at - first_line_at >= 0.8


@pytest.mark.parametrize(
    ("sandbox", "fields", "code", "says"),
    [
        ("nope", {}, grpc.StatusCode.NOT_FOUND, "no sandbox configuration named 'nope'"),
        ("default", {"language": "ruby"}, grpc.StatusCode.FAILED_PRECONDITION, "has no ruby interpreter"),
        ("default", {"timeout": 3600}, grpc.StatusCode.INVALID_ARGUMENT, "timeout must be between 1 and 60"),
    ],
    ids=["unknown-sandbox", "bad-language", "timeout-too-long"],
)
async def test_rejections_carry_the_agents_reason(client: AgentClient, sandbox, fields, code, says) -> None:  # noqa: ANN001
    with pytest.raises(AgentRejected) as rejected:
        await collect(client.execute(sandbox, ExecutionRequest(code="print(1)", **({"timeout": 10} | fields))))
    assert rejected.value.code == code
    assert says in rejected.value.message


async def test_home_goes_in_and_comes_back(client: AgentClient) -> None:
    first = ExecutionRequest(code="echo kept > note.txt", language="bash", timeout=10, collect_home=True)
    _, result = await collect(client.execute("default", first))
    assert result.home
    again = ExecutionRequest(code="cat note.txt", language="bash", timeout=10, home=result.home)
    stdout, result = await collect(client.execute("default", again))
    assert (stdout, result.home) == ("kept\n", None)


async def test_cancelled_call_kills_its_sandbox(agent: AgentServer, client: AgentClient) -> None:
    parent = agent.runtime.cgroup_parent
    sleeping = lambda: [p for p in sandbox_processes(parent) if p.cmdline == b"sleep\x0030\x00"]  # noqa: E731
    call = asyncio.ensure_future(collect(client.execute("cold", ExecutionRequest("sleep 30", "bash", timeout=60))))
    await wait_until(sleeping, 10, "the sandbox running sleep 30")
    [sleeper] = sleeping()
    assert sleeper.uid == 201_000
    doomed = {p.pid for p in sandbox_processes(parent) if p.cgroup == sleeper.cgroup}
    call.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await call
    alive = lambda: doomed & {p.pid for p in sandbox_processes(parent)}  # noqa: E731
    await wait_until(lambda: not alive(), 1.0, "no process of the cancelled sandbox")
    await wait_until(lambda: agent.runtime.running == 0, 1.0, "no running execution")
    assert time.monotonic() - cancelled_at < 1.0


async def test_cancelled_call_releases_the_sandbox_descriptors(client: AgentClient) -> None:
    open_fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731 - the agent runs in this process
    before = open_fds()
    events = client.execute("cold", ExecutionRequest("echo hi; sleep 30", "bash", timeout=10))
    assert await anext(events) == OutputChunk("stdout", b"hi\n")
    await events.aclose()
    await wait_until(lambda: open_fds() <= before, 1.0, "the cancelled sandbox's descriptors closed")
