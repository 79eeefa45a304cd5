"""Every error answer: its status, its stable code, a message saying what to change, and the
one JSON shape; executor failures included."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from typing import Any

import grpc
import pytest
import structlog

from gateway.agents import AgentRejected, AgentUnavailable
from nodeagent.images import LanguageNotInImage
from nodeagent.runtime import UnknownSandbox
from tests.conftest import DEFAULT, TIGHT
from tests.gateway.conftest import SANDBOXES, FailingExecutor, Gateway, GatewayFactory, error_of
from tests.isolation.runtimes import WAIT_S, own_runtime

MIB = 1 << 20


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"code": "print(1)", "shell": True}, "unknown field 'shell'"),
        ({"language": "python"}, "code: Field required"),
        ({"code": ""}, "code: String should have at least 1 character"),
        ({"code": 7}, "code: Input should be a valid string"),
        ({"code": "1", "language": "ruby"}, "'python', 'node' or 'bash'"),
        ({"code": "1", "timeout": 0}, "timeout must be between 1 and 120 seconds"),
        ({"code": "1", "timeout": 121}, "timeout must be between 1 and 120 seconds"),
        ({"code": "1", "timeout": "60"}, "timeout"),
        ({"code": "1", "stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"code": "1", "thread_id": "a/b"}, "thread_id: String should match pattern"),
        ({"code": "1", "thread_id": "x" * 129}, "thread_id"),
        (
            {"code": "1", "metadata": {f"k{i}": "v" for i in range(11)}},
            "metadata: Dictionary should have at most 10 items",
        ),
        ({"code": "1", "metadata": {"k": "v" * 513}}, "metadata.k: String should have at most 512 characters"),
        ({"code": "1", "metadata": {"a key": "v"}}, "metadata.a key"),
        ({"code": "1", "metadata": {"k": 1}}, "metadata.k: Input should be a valid string"),
        ({"code": "1", "metadata": {"k": "a\u0000b"}}, "must not contain NUL"),
        ({"code": "1", "env_vars": {"1X": "v"}}, "env_vars.1X"),
        ({"code": "1", "env_vars": {"BAPONI_TOKEN": "v"}}, "BAPONI_TOKEN is reserved"),
        ({"code": "1", "env_vars": {f"V{i}": "v" for i in range(65)}}, "at most 64 items"),
        (
            {"code": "1", "env_vars": {"V": "v" * (32 * 1024 + 1)}},
            "env_vars.V: String should have at most 32768 characters",
        ),
        ({"code": "1", "env_vars": {f"V{i}": "v" * 30_000 for i in range(5)}}, "at most 131072 (128 KiB) in all"),
        ({"code": "1", "env_vars": {"V": "a\u0000b"}}, "must not contain NUL"),
        ({"code": "1", "webhook_url": "ftp://example.com/hook"}, "webhook_url: URL scheme should be 'http' or 'https'"),
        ({"code": "1", "webhook_url": "not a url"}, "webhook_url"),
        ({"code": "1", "stream": True, "webhook_url": "http://127.0.0.1:9/"}, "either a stream or a webhook_url"),
    ],
)
async def test_invalid_requests_are_400_saying_what_is_wrong(
    gateway: Gateway, secret: str, body: dict[str, Any], expected: str
) -> None:
    response = await gateway.client.post(
        "/v1/sandbox/execute", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert expected in error_of(response, 400, "invalid_request")


async def test_unpaired_surrogates_are_refused(gateway: Gateway, secret: str) -> None:
    raw = b'{"code": "print(1)", "env_vars": {"V": "\\ud800"}}'
    response = await gateway.client.post(
        "/v1/sandbox/execute",
        content=raw,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert "env_vars.V: Input should be a valid string" in error_of(response, 400, "invalid_request")


async def test_body_that_is_not_json(gateway: Gateway, secret: str) -> None:
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    error_of(
        await gateway.client.post("/v1/sandbox/execute", content=b"{code: 1", headers=headers), 400, "invalid_json"
    )
    error_of(
        await gateway.client.post("/v1/sandbox/execute", content=b"\xff\xfe{}", headers=headers), 400, "invalid_json"
    )
    message = error_of(
        await gateway.client.post("/v1/sandbox/execute", content=b"[1, 2]", headers=headers), 400, "invalid_request"
    )
    assert "JSON object" in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(gateway: Gateway, secret: str, content_type: str | None) -> None:
    headers = {"Authorization": f"Bearer {secret}"} | ({"Content-Type": content_type} if content_type else {})
    response = await gateway.client.post("/v1/sandbox/execute", content=b'{"code": "print(1)"}', headers=headers)
    assert "application/json" in error_of(response, 415, "unsupported_media_type")


async def test_code_over_one_mib_is_413(gateway: Gateway, secret: str) -> None:
    code = "#" * MIB + "\n"
    message = error_of(await gateway.execute(secret, code=code), 413, "code_too_large")
    assert "1048577 bytes" in message and "1 MiB" in message
    # 1 MiB exactly is accepted, and counted in UTF-8 bytes, not characters
    assert (await gateway.execute(secret, code="#" * (MIB - 1) + "\n")).status_code == 200
    error_of(await gateway.execute(secret, code="#" + "\u00e9" * (MIB // 2)), 413, "code_too_large")


async def test_body_over_the_cap_is_413_declared_or_chunked(gateway: Gateway, secret: str) -> None:
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    body = b'{"code": "' + b"#" * (3 * MIB) + b'"}'
    error_of(await gateway.client.post("/v1/sandbox/execute", content=body, headers=headers), 413, "body_too_large")

    async def chunked():  # no Content-Length: the cap still holds as the bytes arrive
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]

    error_of(
        await gateway.client.post("/v1/sandbox/execute", content=chunked(), headers=headers), 413, "body_too_large"
    )


async def test_unknown_route_and_method(gateway: Gateway) -> None:
    error_of(await gateway.client.get("/v1/nothing"), 404, "not_found")
    error_of(await gateway.client.get("/v1/sandbox/execute"), 405, "method_not_allowed")


async def test_key_whose_sandbox_is_not_configured_is_503(gateway: Gateway) -> None:
    secret = await gateway.key(sandbox="gone")
    assert "administrator" in error_of(await gateway.execute(secret, code="print(1)"), 503, "sandbox_unavailable")


async def test_sandbox_the_runtime_lacks_is_503(make_gateway: GatewayFactory) -> None:
    """The gateway knows the sandbox, the executor does not (UnknownSandbox from the real runtime)."""
    async with make_gateway(sandboxes={**SANDBOXES, "ghost": dataclasses.replace(TIGHT, name="ghost")}) as gateway:
        secret = await gateway.key(sandbox="ghost")
        assert "ghost" in error_of(await gateway.execute(secret, code="print(1)"), 503, "sandbox_unavailable")


async def test_request_the_runtime_rejects_is_400(make_gateway: GatewayFactory) -> None:
    """The gateway's view allows 100 s, the runtime's sandbox only 30: RequestRejected."""
    async with make_gateway(sandboxes={**SANDBOXES, "tight": dataclasses.replace(TIGHT, max_timeout=100)}) as gateway:
        secret = await gateway.key(sandbox="tight")
        message = error_of(await gateway.execute(secret, code="print(1)", timeout=50), 400, "request_rejected")
        assert "between 1 and 30" in message


@pytest.mark.parametrize(
    ("error", "started", "status", "code", "says"),
    [
        (
            LanguageNotInImage("slim", "node", ("python",)),
            False,
            400,
            "language_not_available",
            "has no node interpreter",
        ),
        (
            UnknownSandbox("no sandbox configuration named 'default'"),
            False,
            503,
            "sandbox_unavailable",
            "administrator",
        ),
        (
            AgentRejected(grpc.StatusCode.INVALID_ARGUMENT, "timeout too long"),
            False,
            400,
            "request_rejected",
            "timeout too long",
        ),
        (
            AgentRejected(grpc.StatusCode.NOT_FOUND, "no sandbox 'default'"),
            False,
            503,
            "sandbox_unavailable",
            "administrator",
        ),
        (AgentUnavailable("agent 10.0.0.1: UNAVAILABLE", started=False), False, 503, "no_agent_available", "retry"),
        (
            AgentUnavailable("agent 10.0.0.1: connection reset", started=True),
            True,
            502,
            "agent_failed",
            "may have run partially",
        ),
        (RuntimeError("secret internals at /srv/x.py line 3"), False, 500, "internal_error", "logged"),
    ],
)
async def test_executor_failures(
    make_gateway: GatewayFactory, error: Exception, started: bool, status: int, code: str, says: str
) -> None:
    async with make_gateway(executor=FailingExecutor(error, started=started)) as gateway:
        secret = await gateway.key()
        with structlog.testing.capture_logs() as logs:
            response = await gateway.execute(secret, code="print(1)", thread_id="t1", metadata={"case": code})
        assert says in error_of(response, status, code)
        assert "Traceback" not in response.text and "/srv/x.py" not in response.text
        if status == 503 and code == "no_agent_available":
            assert int(response.headers["Retry-After"]) >= 1
        if status == 500:
            [logged] = [entry for entry in logs if entry["event"] == "execution failed unexpectedly"]
            assert logged["execution_id"].startswith("ex_") and logged["exc_info"] is error
        # the thread lock was released, and the failure is in the audit log
        assert (await gateway.execute(secret, code="print(1)", thread_id="t1")).status_code == status
        records = await gateway.store.list_executions(await gateway.key_id(secret), metadata={"case": code})
        assert [r.error.split(":")[0] for r in records if r.error] == [code]
        assert records[0].success is False and records[0].exit_code is None


async def test_a_call_whose_agent_stops_answering_ends_after_its_timeout_and_the_grace(
    make_gateway: GatewayFactory,
) -> None:
    """The spawner frozen (SIGSTOP) mid-call: nothing below the gateway enforces the code's
    timeout any more. The gateway ends the call once its timeout and `result_grace_s` have
    passed (502), and the thread is free for the next call."""
    config = dataclasses.replace(DEFAULT, warm=1)
    async with own_runtime(config) as runtime, make_gateway(
        executor=runtime, sandboxes={"default": config}, result_grace_s=1.0
    ) as gateway:
        await runtime.wait_warm(WAIT_S)
        secret = await gateway.key()
        spawner = runtime._spawner._process.pid  # type: ignore[union-attr]  # white-box: the process to freeze
        call = asyncio.ensure_future(
            gateway.execute(secret, code="import time; time.sleep(30)", timeout=1, thread_id="frozen")
        )
        await asyncio.sleep(0.5)
        os.kill(spawner, signal.SIGSTOP)
        try:
            response = await asyncio.wait_for(call, 20)  # the guard answers in ~7 s (1 + 1 + kill wait)
        finally:
            os.kill(spawner, signal.SIGCONT)
        assert "no result 1 s after the code's 1 s timeout" in error_of(response, 502, "agent_failed")
        again = await gateway.execute(secret, code="print('free')", thread_id="frozen")
        assert (again.status_code, again.json()["stdout"]) == (200, "free\n"), again.text
