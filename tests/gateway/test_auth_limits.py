"""API keys, per-key limits and thread locks, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
import structlog

from gateway.errors import RateLimited
from gateway.limits import Limiter
from gateway.store import ApiKey
from tests.gateway.conftest import Gateway, GatewayFactory, both_backends, error_of

SLEEP = "import time; time.sleep({})"


@both_backends
@pytest.mark.parametrize(
    ("authorization", "code", "says"),
    [
        (None, "missing_api_key", "Authorization: Bearer sk-"),
        ("Basic dXNlcjpwYXNz", "missing_api_key", "Authorization: Bearer sk-"),
        ("Bearer", "missing_api_key", "Authorization: Bearer sk-"),
        ("Bearer not-a-key", "invalid_api_key", "unknown or revoked"),
        ("Bearer sk-" + "x" * 48, "invalid_api_key", "unknown or revoked"),
        ("Bearer sk-" + "x" * 5000, "invalid_api_key", "unknown or revoked"),
    ],
)
async def test_missing_malformed_and_unknown_keys_are_401(
    gateway: Gateway, authorization: str | None, code: str, says: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        await gateway.client.post("/v1/sandbox/execute", json={"code": "print(1)"}, headers=headers),
        await gateway.client.get("/v1/executions", headers=headers),
    ):
        assert says in error_of(response, 401, code)
        assert response.headers["WWW-Authenticate"] == "Bearer"


@both_backends
async def test_revoked_key_is_401_and_the_secret_is_never_logged(
    gateway: Gateway, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = await gateway.key()
    with structlog.testing.capture_logs() as logs:
        assert (await gateway.execute(secret, code="print(1)")).status_code == 200
        assert await gateway.store.revoke_key(await gateway.key_id(secret))
        error_of(await gateway.execute(secret, code="print(1)"), 401, "invalid_api_key")
    assert logs and secret not in repr(logs)
    out, err = capfd.readouterr()
    assert secret not in out + err


async def test_concurrency_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    secret = await gateway.key(max_concurrent=1)
    running = asyncio.ensure_future(gateway.execute(secret, code=SLEEP.format(1.5)))
    await asyncio.sleep(0.5)
    response = await gateway.execute(secret, code="print(1)")
    assert "already runs 1 executions" in error_of(response, 429, "concurrency_limit")
    assert int(response.headers["Retry-After"]) >= 1
    assert (await running).status_code == 200
    assert (await gateway.execute(secret, code="print(1)")).status_code == 200  # the slot came back
    other = await gateway.key(max_concurrent=1)  # limits are per key
    assert (await gateway.execute(other, code="print(1)")).status_code == 200


async def test_rate_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    secret = await gateway.key(rate_per_minute=2)
    assert [(await gateway.execute(secret, code="print(1)")).status_code for _ in range(2)] == [200, 200]
    response = await gateway.execute(secret, code="print(1)")
    assert "2 executions a minute" in error_of(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 30


def test_a_call_refused_for_its_rate_holds_no_slot_and_tokens_come_back() -> None:
    """The token bucket on its own clock, so no test waits a minute."""
    now = [0.0]
    limiter = Limiter(retry_after_s=1, clock=lambda: now[0])
    key = ApiKey("k", "k", "default", "p", {}, 5, 1, datetime.now(timezone.utc), None)
    limiter.admit(key).release()
    with pytest.raises(RateLimited) as refused:
        limiter.admit(key)
    assert refused.value.retry_after == 60 and limiter.running["k"] == 0
    now[0] = 60.0  # a minute later the bucket holds one token again
    limiter.admit(key)


@both_backends
async def test_thread_lock_one_at_a_time_released_after(gateway: Gateway) -> None:
    secret = await gateway.key()
    first = asyncio.ensure_future(gateway.execute(secret, code=SLEEP.format(1.5), thread_id="chat-1"))
    await asyncio.sleep(0.5)
    busy = await gateway.execute(secret, code="print(1)", thread_id="chat-1")
    assert "chat-1" in error_of(busy, 409, "thread_busy")
    assert (await first).status_code == 200
    # released as the answer is sent: the next call of the same conversation goes through
    assert (await gateway.execute(secret, code="print(2)", thread_id="chat-1")).json()["stdout"] == "2\n"


@both_backends
async def test_different_threads_and_keys_run_in_parallel(gateway: Gateway) -> None:
    secret, other = await gateway.key(), await gateway.key()
    began = time.monotonic()
    responses = await asyncio.gather(
        gateway.execute(secret, code=SLEEP.format(1), thread_id="a"),
        gateway.execute(secret, code=SLEEP.format(1), thread_id="b"),
        gateway.execute(other, code=SLEEP.format(1), thread_id="a"),  # same name, another key's thread
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert time.monotonic() - began < 2.5


async def test_thread_lock_is_refreshed_while_the_code_runs(make_gateway: GatewayFactory) -> None:
    """With a 1.5 s lock, a 3 s call still holds its thread throughout."""
    async with make_gateway(thread_lock_ttl_s=1.5) as gateway:
        secret = await gateway.key()
        first = asyncio.ensure_future(gateway.execute(secret, code=SLEEP.format(3), thread_id="long"))
        await asyncio.sleep(2.5)
        error_of(await gateway.execute(secret, code="print(1)", thread_id="long"), 409, "thread_busy")
        assert (await first).status_code == 200
