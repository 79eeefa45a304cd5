"""The audit log: one record per execution, read back through GET /v1/executions."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from tests.gateway.conftest import Gateway, both_backends, error_of


async def listed(gateway: Gateway, secret: str, **params: str | int) -> dict:
    response = await gateway.client.get("/v1/executions", params=params, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    return response.json()


@both_backends
async def test_one_record_per_execution_without_code_or_output(gateway: Gateway) -> None:
    secret = await gateway.key()
    before = datetime.now(timezone.utc)
    response = await gateway.execute(
        secret,
        code="print('x' * 10); import sys; print('e', file=sys.stderr); exit(4)",
        thread_id="audit-1",
        metadata={"user": "u1", "model": "m"},
    )
    assert response.json()["exit_code"] == 4
    [record] = await gateway.store.list_executions(await gateway.key_id(secret))
    assert record.id == response.json()["execution_id"]
    assert (record.sandbox, record.language, record.thread_id, record.metadata) == (
        "default",
        "python",
        "audit-1",
        {"user": "u1", "model": "m"},
    )
    assert (record.exit_code, record.success, record.stdout_bytes, record.stderr_bytes) == (4, False, 11, 2)
    assert not record.timed_out and not record.oom_killed and record.error is None
    assert before <= record.started_at <= record.finished_at <= datetime.now(timezone.utc)
    assert record.duration_ms > 0
    assert (record.code, record.stdout, record.stderr) == (None, None, None)


@both_backends
async def test_listing_filters_pages_and_stays_within_the_key(gateway: Gateway) -> None:
    secret, other = await gateway.key(), await gateway.key()
    for user in ("alice", "bob", "alice"):
        assert (await gateway.execute(secret, code="print(1)", metadata={"user": user, "team": "t"})).status_code == 200
    assert (await gateway.execute(other, code="print(1)", metadata={"user": "alice"})).status_code == 200
    mine = (await listed(gateway, secret))["executions"]
    assert len(mine) == 3 and mine[0]["started_at"] >= mine[-1]["started_at"]  # newest first
    assert {"code", "stdout", "stderr", "key_id"}.isdisjoint(mine[0])
    alice = (await listed(gateway, secret, **{"metadata.user": "alice"}))["executions"]
    assert [e["metadata"]["user"] for e in alice] == ["alice", "alice"]
    both = await listed(gateway, secret, **{"metadata.user": "alice", "metadata.team": "t"})
    assert len(both["executions"]) == 2
    assert (await listed(gateway, secret, **{"metadata.user": "carol"}))["executions"] == []
    theirs = (await listed(gateway, other))["executions"]
    assert [e["id"] for e in theirs] != [] and not {e["id"] for e in theirs} & {e["id"] for e in mine}

    first = await listed(gateway, secret, limit=2)
    assert len(first["executions"]) == 2 and first["next_before"] == first["executions"][1]["id"]
    rest = await listed(gateway, secret, limit=2, before=first["next_before"])
    assert [e["id"] for e in rest["executions"]] == [mine[2]["id"]] and rest["next_before"] is None
    assert (await listed(gateway, other, before=mine[1]["id"]))[
        "executions"
    ] == []  # another key's cursor finds nothing


@both_backends
async def test_listing_by_time(gateway: Gateway) -> None:
    secret = await gateway.key()
    await gateway.execute(secret, code="print(1)")
    middle = datetime.now(timezone.utc)
    await asyncio.sleep(0.05)
    await gateway.execute(secret, code="print(2)")
    later = (await listed(gateway, secret, since=middle.isoformat()))["executions"]
    earlier = (await listed(gateway, secret, until=middle.isoformat()))["executions"]
    assert len(later) == len(earlier) == 1 and later[0]["id"] != earlier[0]["id"]
    naive = (middle + timedelta(hours=1)).replace(tzinfo=None).isoformat()  # naive is UTC
    assert len((await listed(gateway, secret, until=naive))["executions"]) == 2


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"metadata.a key": "v"}, "metadata.a key"),
        ({"metadata.k": "v" * 513}, "at most 512 characters"),
        ({"metadata.k": "a\x00b"}, "NUL"),
        ({f"metadata.k{i}": "v" for i in range(11)}, "at most 10 items"),
        ({"since": "yesterday"}, "since"),
        ({"until": "0001-01-01T00:00:00+05:00"}, "until"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"before": "x;drop"}, "before"),
    ],
)
async def test_bad_filters_are_400(gateway: Gateway, secret: str, params: dict, says: str) -> None:
    response = await gateway.client.get("/v1/executions", params=params, headers={"Authorization": f"Bearer {secret}"})
    assert says in error_of(response, 400, "invalid_request")
