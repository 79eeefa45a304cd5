"""Webhook delivery to a real HTTP receiver on 127.0.0.1: signed, retried, kept across restarts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.agents import AgentUnavailable
from gateway.settings import MASTER_SECRET_ENV, MASTER_SECRET_FILE, Settings
from tests.gateway.conftest import FailingExecutor, Gateway, GatewayFactory, both_backends, serve


class Receiver:
    """Records every POST; answers 500 to the first `failures` of them."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def hook(self, request: Request) -> Response:
        self.calls.append((dict(request.headers), await request.body()))
        return Response(status_code=500 if len(self.calls) <= self.failures else 204)

    async def wait(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} of {count} deliveries arrived"
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with serve(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as url:
        receiver.url = url + "/hook"
        yield receiver


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, written from the documented scheme rather than the gateway's code."""
    fields = dict(part.split("=", 1) for part in headers["baponi-signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


async def accepted(gateway: Gateway, secret: str, **body: Any) -> str:
    began = time.monotonic()
    response = await gateway.execute(secret, **body)
    assert response.status_code == 202, response.text
    assert time.monotonic() - began < 0.9, "a webhook call answers at once, not when the code ends"
    assert response.json()["status"] == "accepted"
    return response.json()["execution_id"]


async def test_result_is_posted_signed(gateway: Gateway, secret: str, receiver: Receiver) -> None:
    execution_id = await accepted(
        gateway, secret, code="import time; time.sleep(1); print('hooked')", webhook_url=receiver.url
    )
    await receiver.wait(1)
    [(headers, body)] = receiver.calls
    assert verify(gateway.settings.webhook_secret_for(await gateway.key_id(secret)), headers, body)
    assert not verify(gateway.settings.webhook_secret_for("key_someone_else"), headers, body)
    assert headers["baponi-execution-id"] == execution_id
    assert headers["content-type"] == "application/json"
    result = json.loads(body)
    assert (result["execution_id"], result["stdout"], result["success"]) == (execution_id, "hooked\n", True)
    [record] = await gateway.store.list_executions(await gateway.key_id(secret))
    assert record.id == execution_id


async def test_failing_receiver_gets_the_third_attempt(gateway: Gateway, secret: str, receiver: Receiver) -> None:
    receiver.failures = 2
    await accepted(gateway, secret, code="print(3)", webhook_url=receiver.url)
    await receiver.wait(3)
    await asyncio.sleep(0.5)
    assert len(receiver.calls) == 3, "a delivered webhook is not sent again"
    bodies = {body for _, body in receiver.calls}
    assert len(bodies) == 1
    secret_for_key = gateway.settings.webhook_secret_for(await gateway.key_id(secret))
    assert all(verify(secret_for_key, headers, body) for headers, body in receiver.calls)


async def test_gives_up_after_the_last_attempt(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    receiver.failures = 99
    async with make_gateway(webhook_attempts=3) as gateway:
        await accepted(gateway, await gateway.key(), code="print(1)", webhook_url=receiver.url)
        await receiver.wait(3)
        await asyncio.sleep(0.8)  # backoff 0.05, 0.1, 0.2 ... would have sent more by now
        assert len(receiver.calls) == 3


@both_backends
async def test_pending_deliveries_survive_a_restart(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    async with make_gateway(deliver_webhooks=False) as first:
        secret = await first.key()
        execution_id = await accepted(first, secret, code="print('later')", webhook_url=receiver.url)
    # shutting down waited for the execution to end and queue its result; nothing was sent
    assert receiver.calls == []
    async with make_gateway() as second:
        await receiver.wait(1)
        headers, body = receiver.calls[0]
        assert verify(second.settings.webhook_secret_for(await second.key_id(secret)), headers, body)
    assert headers["baponi-execution-id"] == execution_id and json.loads(body)["stdout"] == "later\n"


async def test_an_execution_that_failed_is_delivered_as_its_error(
    make_gateway: GatewayFactory, receiver: Receiver
) -> None:
    async with make_gateway(executor=FailingExecutor(AgentUnavailable("agent a: down", started=False))) as gateway:
        execution_id = await accepted(gateway, await gateway.key(), code="print(1)", webhook_url=receiver.url)
        await receiver.wait(1)
    body = json.loads(receiver.calls[0][1])
    assert body["execution_id"] == execution_id and body["error"]["code"] == "no_agent_available"


def test_webhook_secrets_are_derived_per_key(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path, environ={})
    path = tmp_path / MASTER_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Settings.load(tmp_path, environ={})
    assert (
        again.webhook_secret_for("key_a")
        == settings.webhook_secret_for("key_a")
        != settings.webhook_secret_for("key_b")
    )
    from_env = Settings.load(tmp_path, environ={MASTER_SECRET_ENV: "m" * 40})
    assert from_env.webhook_secret_for("key_a") != settings.webhook_secret_for("key_a")
    expected = hmac.new(b"m" * 40, b"key_a", hashlib.sha256).hexdigest()
    assert from_env.webhook_secret_for("key_a") == expected


def test_master_secret_must_be_private_and_long(tmp_path: Path) -> None:
    Settings.load(tmp_path, environ={})
    os.chmod(tmp_path / MASTER_SECRET_FILE, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        Settings.load(tmp_path, environ={})
    with pytest.raises(ValueError, match="at least 32"):
        Settings.load(tmp_path, environ={MASTER_SECRET_ENV: "short"})
