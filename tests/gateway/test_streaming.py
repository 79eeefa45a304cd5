"""NDJSON streaming over a real uvicorn server, read line by line as it arrives."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from gateway.agents import AgentUnavailable
from tests.gateway.conftest import FIELDS, FailingExecutor, Gateway, GatewayFactory, error_of


async def stream(
    gateway: Gateway, secret: str, headers: dict[str, str] | None = None, **body: Any
) -> list[tuple[float, dict[str, Any]]]:
    """Each line with the time it arrived, relative to the request."""
    began = time.monotonic()
    lines = []
    async with gateway.client.stream(
        "POST", "/v1/sandbox/execute", json=body, headers={"Authorization": f"Bearer {secret}", **(headers or {})}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        async for line in response.aiter_lines():
            lines.append((time.monotonic() - began, json.loads(line)))
    return lines


async def test_output_arrives_as_it_is_produced(gateway: Gateway, secret: str) -> None:
    lines = await stream(
        gateway, secret, code="import time; print(1, flush=True); time.sleep(2); print(2)", stream=True
    )
    events = [event for _, event in lines]
    assert events[0]["type"] == "started" and events[0]["execution_id"].startswith("ex_")
    outputs = [(at, event["data"]) for at, event in lines if event["type"] == "stdout"]
    assert [data for _, data in outputs] == ["1\n", "2\n"]
    result_at, result = lines[-1]
    assert result["type"] == "result" and set(result) == FIELDS | {"type"}
    assert (result["stdout"], result["exit_code"], result["execution_id"]) == ("1\n2\n", 0, events[0]["execution_id"])
    assert result_at - outputs[0][0] > 1.5, "the first line came only at the end"


async def test_accept_header_asks_for_a_stream(gateway: Gateway, secret: str) -> None:
    lines = await stream(
        gateway, secret, headers={"Accept": "application/x-ndjson"}, code="console.log('n')", language="node"
    )
    assert [event["type"] for _, event in lines] == ["started", "stdout", "result"]


async def test_characters_split_between_chunks_stay_whole(gateway: Gateway, secret: str) -> None:
    code = (
        "import sys, time\n"
        "sys.stdout.buffer.write(b'\\xc3'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.buffer.write(b'\\xa9 \\xff\\n'); sys.stdout.flush()\n"
        "print('err', file=sys.stderr)"
    )
    events = [event for _, event in await stream(gateway, secret, code=code, stream=True)]
    # the lone first byte gives no line of its own, and never a replacement character
    assert [e["data"] for e in events if e["type"] == "stdout"] == ["\u00e9 \ufffd\n"]
    assert [e["data"] for e in events if e["type"] == "stderr"] == ["err\n"]
    assert events[-1]["stdout"] == "\u00e9 \ufffd\n"


async def test_failure_before_the_start_is_a_plain_error(gateway: Gateway, secret: str) -> None:
    holder = asyncio.ensure_future(gateway.execute(secret, code="import time; time.sleep(1)", thread_id="s1"))
    await asyncio.sleep(0.4)
    response = await gateway.execute(secret, code="print(1)", thread_id="s1", stream=True)
    error_of(response, 409, "thread_busy")
    await holder


async def test_failure_after_the_start_is_the_last_line(make_gateway: GatewayFactory) -> None:
    async with make_gateway(
        executor=FailingExecutor(AgentUnavailable("agent a: reset", started=True), started=True)
    ) as gateway:
        lines = await stream(gateway, await gateway.key(), code="print(1)", stream=True)
    events = [event for _, event in lines]
    assert [e["type"] for e in events] == ["started", "stdout", "error"]
    assert events[1]["data"] == "partial\n"
    assert events[-1]["error"]["code"] == "agent_failed"


async def test_closing_the_stream_cancels_the_execution_and_frees_the_thread(gateway: Gateway, secret: str) -> None:
    async with gateway.client.stream(
        "POST",
        "/v1/sandbox/execute",
        headers={"Authorization": f"Bearer {secret}"},
        json={"code": "import time; print('go', flush=True); time.sleep(60)", "thread_id": "gone", "stream": True},
    ) as response:
        lines = response.aiter_lines()
        assert json.loads(await anext(lines))["type"] == "started"
        assert json.loads(await anext(lines))["data"] == "go\n"
    for _ in range(50):  # the gateway notices the hang-up, kills the sandbox, frees the thread
        response = await gateway.execute(secret, code="print('next')", thread_id="gone")
        if response.status_code != 409:
            break
        await asyncio.sleep(0.1)
    assert response.json()["stdout"] == "next\n"
    [_, cancelled] = await gateway.store.list_executions(await gateway.key_id(secret))
    assert cancelled.error is not None and cancelled.error.startswith("execution_cancelled")
