"""POST /v1/sandbox/execute end to end: real HTTP, real sandboxes, real store."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from tests.conftest import DEFAULT
from tests.gateway.conftest import FIELDS, SANDBOXES, Gateway, GatewayFactory

async def test_first_example_of_the_reference(gateway: Gateway, secret: str) -> None:
    response = await gateway.execute(secret, code="print(sum(range(100)))", language="python")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == FIELDS
    assert (body["success"], body["stdout"], body["stderr"], body["exit_code"]) == (True, "4950\n", "", 0)
    assert body["execution_id"].startswith("ex_")
    assert body["duration_ms"] > 0
    assert not any(body[flag] for flag in ("stdout_truncated", "stderr_truncated", "timed_out", "oom_killed"))
    assert body["signal"] is None and body["sandbox_error"] is None


async def test_languages_and_failing_code(gateway: Gateway, secret: str) -> None:
    node, bash, failing = await asyncio.gather(
        gateway.execute(secret, code="console.log(6 * 7)", language="node"),
        gateway.execute(secret, code="echo out; echo err >&2; exit 3", language="bash"),
        gateway.execute(secret, code="raise SystemExit('no')"),
    )
    assert node.json()["stdout"] == "42\n"
    assert (bash.json()["stdout"], bash.json()["stderr"], bash.json()["exit_code"]) == ("out\n", "err\n", 3)
    assert bash.json()["success"] is False
    assert (failing.json()["exit_code"], failing.json()["stderr"]) == (1, "no\n")


async def test_timeout_is_reported(gateway: Gateway, secret: str) -> None:
    body = (await gateway.execute(secret, code="echo before; sleep 30", language="bash", timeout=1)).json()
    assert body["timed_out"] is True and body["success"] is False
    assert body["stdout"] == "before\n"
    assert body["duration_ms"] < 10_000


async def test_environment_precedence_sandbox_then_key_then_request(make_gateway: GatewayFactory) -> None:
    sandboxes = {
        **SANDBOXES,
        "default": dataclasses.replace(DEFAULT, env={"A": "sandbox", "B": "sandbox", "C": "sandbox"}),
    }
    async with make_gateway(sandboxes=sandboxes) as gateway:
        secret = await gateway.key(env={"B": "key", "C": "key"})
        code = "import os; print(os.environ['A'], os.environ['B'], os.environ['C'], os.environ['PATH'] != '')"
        body = (await gateway.execute(secret, code=code, env_vars={"C": "request"})).json()
    assert body["stdout"] == "sandbox key request True\n"


async def test_metadata_never_reaches_the_sandbox(gateway: Gateway, secret: str) -> None:
    metadata = {"user-k4q9": "alice-7f3a9c", "session-z2w8": "sess-b81d2e"}
    code = (
        "import json, os, sys; print(json.dumps(dict(os.environ)))\n"
        "print(sys.argv); print(open('/proc/self/cmdline').read())"
    )
    body = (await gateway.execute(secret, code=code, metadata=metadata)).json()
    assert body["success"], body
    environment = json.loads(body["stdout"].splitlines()[0])
    assert environment["HOME"] == "/home/baponi"
    for value in (*metadata.values(), *metadata):
        assert value not in body["stdout"] and value not in body["stderr"]
    [record] = await gateway.store.list_executions(await gateway.key_id(secret))
    assert record.metadata == metadata


async def test_fifty_concurrent_calls_all_answered_correctly(gateway: Gateway) -> None:
    secret = await gateway.key(max_concurrent=50, rate_per_minute=1000)
    responses = await asyncio.gather(*(gateway.execute(secret, code=f"print({i} * 3)") for i in range(50)))
    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
    assert [r.json()["stdout"] for r in responses] == [f"{i * 3}\n" for i in range(50)]
    assert len({r.json()["execution_id"] for r in responses}) == 50


async def test_undecodable_output_is_replaced_not_refused(gateway: Gateway, secret: str) -> None:
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe \\xc3\\xa9\\n')"
    body = (await gateway.execute(secret, code=code)).json()
    assert body["stdout"] == "ok \ufffd\ufffd \u00e9\n"


async def test_default_timeout_is_capped_by_the_sandbox(gateway: Gateway) -> None:
    """TIGHT allows 30 s at most: no timeout given means 30, not 60, and runs."""
    secret = await gateway.key(sandbox="tight")
    body = (await gateway.execute(secret, code="print('tight')")).json()
    assert body["stdout"] == "tight\n"
