"""The gateway's store, every behaviour on both backends: SQLite in a temporary directory and
the PostgreSQL server of this machine, in a database created for this test session."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from gateway.store import ApiKey, Execution, Store, open_store
from gateway.store.migrations import MIGRATIONS, Migration
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

from .postgres import postgres_database

BACKENDS = ["sqlite", "postgresql"]
TABLES = "api_keys, executions, thread_locks, webhook_deliveries"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# -- databases


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of this test session's own, dropped at its end."""
    with postgres_database("baponi_test") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/baponi.db"
        return
    pg_url = request.getfixturevalue("pg_url")
    yield pg_url
    with contextlib.suppress(psycopg.errors.UndefinedTable):  # a test that never opened the store
        raw(pg_url, f"TRUNCATE {TABLES}")


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, never migrated; on PostgreSQL a new schema of the session's database
    (a database of its own per test would cost most of this file's run time)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    pg_url = request.getfixturevalue("pg_url")
    schema = "fresh_" + secrets.token_hex(6)
    raw(pg_url, f"CREATE SCHEMA {schema}")
    yield f"{pg_url}?options=-csearch_path%3D{schema}"
    raw(pg_url, f"DROP SCHEMA {schema} CASCADE")


@pytest_asyncio.fixture
async def store(url: str, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(url, tmp_path)
    yield opened
    await opened.close()


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def raw(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A query on the database itself, behind the store's back."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            return connection.execute(sql, params).fetchall()
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def everything_stored(url: str) -> bytes:
    """SQLite: the database's files as they are on disk; PostgreSQL: every row of every table."""
    if url.startswith("sqlite:///"):
        path = _sqlite_path(url)
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    return "\n".join(str(raw(url, f"SELECT t::text FROM {name} AS t")) for name in tables(url)).encode()


async def open_at_version(url: str, migrations: Sequence[Migration]) -> Store:
    if url.startswith("sqlite:///"):
        return await SqliteStore.open(_sqlite_path(url), migrations)
    return await PostgresStore.open(url, migrations)


def tables(url: str) -> set[str]:
    if url.startswith("sqlite:///"):
        return {name for (name,) in raw(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    return {name for (name,) in raw(url, sql)}


def versions(url: str) -> list[tuple[int, str]]:
    return raw(url, "SELECT version, name FROM schema_migrations ORDER BY version")


def make_execution(key: ApiKey, started_at: datetime, **fields: Any) -> Execution:
    defaults: dict[str, Any] = dict(
        id="exe_" + uuid.uuid4().hex, key_id=key.id, sandbox=key.sandbox, language="python", thread_id=None,
        metadata={}, exit_code=0, success=True, duration_ms=3.25, stdout_bytes=5, stderr_bytes=0,
        timed_out=False, oom_killed=False, error=None, started_at=started_at,
        finished_at=started_at + timedelta(milliseconds=4),
    )  # fmt: skip
    return Execution(**(defaults | fields))


# -- opening


@pytest.mark.parametrize(
    "bad", ["mysql://app:hunter2@db/baponi", "sqlite://baponi.db", "sqlite:///", "baponi.db", "postgresql+psycopg://x"]
)
async def test_unsupported_url_names_the_accepted_forms(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported database URL") as error:
        await open_store(bad, tmp_path)
    message = str(error.value)
    assert "postgresql://" in message and "sqlite:///" in message and "data_dir" in message
    assert "hunter2" not in message


async def test_default_is_sqlite_in_the_data_dir_readable_by_its_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    previous = os.umask(0o022)
    try:
        store = await open_store(None, data_dir)
        await store.create_key("k", "default")  # a write, so the -wal and -shm files exist
        files = sorted(data_dir.iterdir())
        assert [f.name for f in files] == ["baponi.db", "baponi.db-shm", "baponi.db-wal"]
        assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
        await store.close()
        (data_dir / "baponi.db").chmod(0o644)  # widened by hand: tightened again on open
        await (await open_store(None, data_dir)).close()
        assert stat.S_IMODE((data_dir / "baponi.db").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


async def test_sqlite_url_names_the_file(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/elsewhere/state.db", tmp_path / "data")
    await store.close()
    assert (tmp_path / "elsewhere" / "state.db").is_file()
    assert not (tmp_path / "data" / "baponi.db").exists()


async def test_unreachable_postgresql_fails_at_once_with_the_reason() -> None:
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        await asyncio.wait_for(open_store("postgresql://postgres@127.0.0.1:1/baponi", Path("/nonexistent")), 5)


# -- API keys


async def test_create_key_returns_the_secret_once_and_stores_only_its_hash(store: Store, url: str) -> None:
    key, secret = await store.create_key("ci", "default", env={"MODE": "test"}, max_concurrent=2, rate_per_minute=60)
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{48}", secret)
    assert (key.name, key.sandbox, key.env, key.max_concurrent, key.rate_per_minute) == (
        "ci", "default", {"MODE": "test"}, 2, 60,
    )  # fmt: skip
    assert key.prefix == secret[3:11] and key.revoked_at is None
    assert key.created_at.tzinfo == UTC and abs(key.created_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert secret not in repr(key)

    assert await store.key_by_secret(secret) == key
    assert await store.get_key(key.id) == key
    assert await store.list_keys() == [key]
    assert await store.key_by_secret(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None

    assert raw(url, "SELECT secret_hash FROM api_keys") == [("sha256:" + hashlib.sha256(secret.encode()).hexdigest(),)]
    stored = everything_stored(url)
    assert key.id.encode() in stored  # the dump does hold the key's row...
    assert secret[3:].encode() not in stored  # ...and never the secret, nor its random part


async def test_a_bootstrap_secret_is_registered_once(store: Store) -> None:
    secret = "sk-" + secrets.token_urlsafe(30)
    first, returned = await store.create_key("bootstrap", "default", secret=secret)
    assert returned == secret and first.prefix == secret[3:11]
    again, _ = await store.create_key("renamed", "other", secret=secret)
    assert again == first
    assert await store.list_keys() == [first]
    assert await store.key_by_secret(secret) == first


@pytest.mark.parametrize("bad", ["pk-" + "x" * 40, "sk-too-short", "x" * 40])
async def test_a_malformed_bootstrap_secret_is_refused_without_echoing_it(store: Store, bad: str) -> None:
    with pytest.raises(ValueError, match="must start with 'sk-' and be at least 32 characters") as error:
        await store.create_key("bootstrap", "default", secret=bad)
    assert bad not in str(error.value)
    assert await store.list_keys() == []


async def test_a_revoked_key_no_longer_authenticates(store: Store) -> None:
    a, secret_a = await store.create_key("a", "default")
    b, secret_b = await store.create_key("b", "default")
    assert await store.key_by_secret(secret_a) == a  # looked up (and remembered) while live
    assert await store.revoke_key(a.id)
    assert await store.key_by_secret(secret_a) is None
    assert await store.key_by_secret(secret_b) == b
    revoked = await store.get_key(a.id)
    assert revoked is not None and revoked.revoked_at is not None and revoked.revoked_at.tzinfo == UTC
    assert not await store.revoke_key(a.id)  # already revoked
    assert not await store.revoke_key("key_unknown")
    assert await store.list_keys() == [revoked, b]
    again, _ = await store.create_key("a", "default", secret=secret_a)
    assert again == revoked  # registering a revoked bootstrap secret again does not revive it


# -- the audit log


async def test_executions_round_trip_and_stay_with_their_key(store: Store) -> None:
    a, _ = await store.create_key("a", "default")
    b, _ = await store.create_key("b", "gpu")
    full = make_execution(
        a, T0, language="bash", thread_id="t-1", metadata={"job": "nightly"}, exit_code=None, success=False,
        duration_ms=30001.5, stdout_bytes=10 << 20, stderr_bytes=7, timed_out=True, oom_killed=True,
        error="sandbox died", code="sleep 99", stdout="partial ünïcode", stderr="",
        finished_at=T0 + timedelta(seconds=30, microseconds=1),
    )  # fmt: skip
    other_a = make_execution(a, T0 + timedelta(seconds=1))
    of_b = make_execution(b, T0 + timedelta(seconds=2), metadata={"job": "nightly"})
    for execution in (full, other_a, of_b):
        await store.record_execution(execution)

    assert await store.list_executions(a.id) == [other_a, full]
    assert await store.list_executions(b.id) == [of_b]
    assert await store.list_executions(a.id, metadata={"job": "nightly"}) == [full]
    assert await store.list_executions(b.id, before_id=other_a.id) == []  # another key's cursor leads nowhere
    assert await store.list_executions("key_unknown") == []


async def test_executions_filter_by_metadata_and_time_and_page_newest_first(store: Store) -> None:
    key, _ = await store.create_key("a", "default")
    odd_key = 'a.b "c" $[0]'
    executions = [
        make_execution(
            key, T0 + timedelta(minutes=i), metadata={"team": "x" if i % 2 else "y", "run": str(i), odd_key: str(i % 3)}
        )
        for i in range(7)
    ]
    for execution in reversed(executions):  # insertion order does not matter
        await store.record_execution(execution)
    newest_first = executions[::-1]

    def ids(found: list[Execution]) -> list[str]:
        return [e.id for e in found]

    assert ids(await store.list_executions(key.id, metadata={"team": "x"})) == ids(newest_first[1::2])
    assert ids(await store.list_executions(key.id, metadata={"team": "x", "run": "3"})) == [executions[3].id]
    assert await store.list_executions(key.id, metadata={"team": "x", "run": "2"}) == []  # every pair must hold
    assert await store.list_executions(key.id, metadata={"team": "z"}) == []
    assert ids(await store.list_executions(key.id, metadata={odd_key: "0"})) == ids(
        [executions[6], executions[3], executions[0]]
    )

    window = await store.list_executions(key.id, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5))
    assert ids(window) == ids(newest_first[2:5])  # [since, until)
    other_zone = timezone(timedelta(hours=2))
    assert await store.list_executions(key.id, since=(T0 + timedelta(minutes=6)).astimezone(other_zone)) == [
        executions[6]
    ]

    pages, before = [], None
    while page := await store.list_executions(key.id, limit=3, before_id=before):
        pages.append(ids(page))
        before = page[-1].id
    assert pages == [ids(newest_first[0:3]), ids(newest_first[3:6]), ids(newest_first[6:])]
    assert ids(await store.list_executions(key.id, metadata={"team": "y"}, limit=2, before_id=executions[4].id)) == ids(
        [executions[2], executions[0]]
    )


async def test_same_start_time_pages_without_loss(store: Store) -> None:
    key, _ = await store.create_key("a", "default")
    executions = [make_execution(key, T0) for _ in range(5)]
    for execution in executions:
        await store.record_execution(execution)
    first = await store.list_executions(key.id, limit=2)
    rest = await store.list_executions(key.id, before_id=first[-1].id)
    assert sorted(e.id for e in first + rest) == sorted(e.id for e in executions)


async def test_naive_datetimes_are_refused(store: Store) -> None:
    key, _ = await store.create_key("a", "default")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.list_executions(key.id, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.record_execution(make_execution(key, datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.due_webhooks(datetime(2026, 1, 1))


# -- thread locks


async def test_a_thread_runs_one_execution_at_a_time_and_only_its_holder_releases_it(store: Store) -> None:
    assert await store.acquire_thread("t", "e1", 30)
    assert not await store.acquire_thread("t", "e2", 30)
    assert await store.acquire_thread("t", "e1", 30)  # the holder asking again keeps it
    assert await store.acquire_thread("other-thread", "e2", 30)
    assert not await store.release_thread("t", "e2")
    assert not await store.acquire_thread("t", "e2", 30)
    assert await store.release_thread("t", "e1")
    assert not await store.release_thread("t", "e1")
    assert await store.acquire_thread("t", "e2", 30)


async def test_an_expired_lock_is_taken_over_and_a_refreshed_one_is_not(store: Store) -> None:
    assert await store.acquire_thread("crashed", "e1", 0.05)
    assert await store.acquire_thread("long", "e1", 0.05)
    assert await store.refresh_thread("long", "e1", 30)
    await asyncio.sleep(0.1)
    assert await store.acquire_thread("crashed", "e2", 30)
    assert not await store.acquire_thread("long", "e2", 30)
    # The first holder has lost its lock, and learns so.
    assert not await store.refresh_thread("crashed", "e1", 30)
    assert not await store.release_thread("crashed", "e1")
    assert not await store.acquire_thread("crashed", "e1", 30)


async def test_concurrent_acquirers_of_one_thread_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.acquire_thread("contended", f"e{i}", 30) for i in range(10)))
    assert results.count(True) == 1


# -- webhook deliveries


async def test_webhooks_are_claimed_in_due_order_retried_and_given_up(store: Store, url: str) -> None:
    key, _ = await store.create_key("a", "default")
    first, second, third = [
        await store.enqueue_webhook(f"exe_{i}", key.id, f"https://hook/{i}", b"\x00{}" * i) for i in range(3)
    ]
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert await store.due_webhooks(now - timedelta(hours=1)) == []

    claimed = await store.due_webhooks(now, 2)
    assert [d.id for d in claimed] == [first, second]
    assert (claimed[1].execution_id, claimed[1].key_id, claimed[1].url, claimed[1].body) == (
        "exe_1", key.id, "https://hook/1", b"\x00{}",
    )  # fmt: skip
    assert {(d.attempts, d.next_attempt_at) for d in claimed} == {(1, now + timedelta(seconds=60))}
    assert [d.id for d in await store.due_webhooks(now)] == [third]  # the first two are leased
    assert await store.due_webhooks(now) == []

    await store.mark_webhook(first, delivered=True)
    await store.mark_webhook(second, delivered=False, next_attempt_at=now + timedelta(seconds=5), error="HTTP 500")
    await store.mark_webhook(third, delivered=False, next_attempt_at=None, error="gave up after 1 attempt")
    assert await store.due_webhooks(now + timedelta(seconds=4)) == []
    fourth = await store.enqueue_webhook("exe_3", key.id, "https://hook/3", b"{}")
    retried = await store.due_webhooks(now + timedelta(seconds=5))
    assert [(d.id, d.attempts) for d in retried] == [(fourth, 1), (second, 2)]

    # The gateway that claimed them died without marking them: after the lease they are due again.
    later = now + timedelta(seconds=5 + 61)
    assert {(d.id, d.attempts) for d in await store.due_webhooks(later, lease_s=1)} == {(fourth, 2), (second, 3)}
    for delivery_id in (second, fourth):
        await store.mark_webhook(delivery_id, delivered=True)
    assert await store.due_webhooks(now + timedelta(days=365)) == []

    state = dict(
        (row[0], row[1:])
        for row in raw(
            url, "SELECT id, delivered_at IS NOT NULL, next_attempt_at IS NULL, last_error FROM webhook_deliveries"
        )
    )
    assert {i: (bool(d), bool(n), e) for i, (d, n, e) in state.items()} == {
        first: (True, True, None), second: (True, True, None), fourth: (True, True, None),
        third: (False, True, "gave up after 1 attempt"),
    }  # fmt: skip
    with pytest.raises(ValueError, match="no next attempt"):
        await store.mark_webhook(first, delivered=True, next_attempt_at=now)


async def test_concurrent_claimers_never_get_the_same_delivery(store: Store, url: str, tmp_path: Path) -> None:
    key, _ = await store.create_key("a", "default")
    queued = {await store.enqueue_webhook(f"exe_{i}", key.id, "https://hook", b"{}") for i in range(40)}
    second_gateway = await open_store(url, tmp_path)
    claims: list[str] = []

    async def claimer(gateway: Store) -> None:
        while batch := await gateway.due_webhooks(datetime.now(UTC), 3):
            claims.extend(d.id for d in batch)

    try:
        await asyncio.gather(*(claimer(gateway) for gateway in [store, second_gateway] * 4))
    finally:
        await second_gateway.close()
    assert sorted(claims) == sorted(queued)


async def test_postgresql_claimers_skip_rows_another_is_claiming(pg_url: str, tmp_path: Path) -> None:
    store = await open_store(pg_url, tmp_path)
    try:
        key, _ = await store.create_key("a", "default")
        queued = [await store.enqueue_webhook(f"exe_{i}", key.id, "https://hook", b"{}") for i in range(4)]
        async with await psycopg.AsyncConnection.connect(pg_url) as other:
            # Another gateway is inside its claiming transaction, holding the first two rows.
            await other.execute("SELECT id FROM webhook_deliveries WHERE id = ANY(%s) FOR UPDATE", [queued[:2]])
            now = datetime.now(UTC)
            claimed = await asyncio.wait_for(store.due_webhooks(now), 5)  # not blocked by the locks
            assert [d.id for d in claimed] == queued[2:]
            await other.rollback()
        assert [d.id for d in await store.due_webhooks(now)] == queued[:2]
    finally:
        await store.close()
        raw(pg_url, f"TRUNCATE {TABLES}")


# -- migrations


async def test_a_fresh_database_gets_every_migration_and_reopening_changes_nothing(
    fresh_url: str, tmp_path: Path
) -> None:
    store = await open_store(fresh_url, tmp_path)
    key, secret = await store.create_key("a", "default")
    await store.close()
    expected = [(m.version, m.name) for m in MIGRATIONS]
    assert versions(fresh_url) == expected
    applied_at = raw(fresh_url, "SELECT applied_at FROM schema_migrations ORDER BY version")

    store = await open_store(fresh_url, tmp_path)
    try:
        assert await store.key_by_secret(secret) == key
    finally:
        await store.close()
    assert versions(fresh_url) == expected
    assert raw(fresh_url, "SELECT applied_at FROM schema_migrations ORDER BY version") == applied_at


async def test_an_old_database_is_migrated_forward_with_its_data(fresh_url: str, tmp_path: Path) -> None:
    old = await open_at_version(fresh_url, MIGRATIONS[:1])
    key, secret = await old.create_key("a", "default")
    execution = make_execution(key, T0, metadata={"k": "v"})
    await old.record_execution(execution)
    await old.close()
    assert versions(fresh_url) == [(1, MIGRATIONS[0].name)]

    store = await open_store(fresh_url, tmp_path)
    try:
        assert versions(fresh_url) == [(m.version, m.name) for m in MIGRATIONS]
        assert await store.key_by_secret(secret) == key
        assert await store.list_executions(key.id, metadata={"k": "v"}) == [execution]
        assert await store.acquire_thread("t", execution.id, 30)
        await store.enqueue_webhook(execution.id, key.id, "https://hook", b"{}")
        assert len(await store.due_webhooks(datetime.now(UTC) + timedelta(seconds=1))) == 1
    finally:
        await store.close()


async def test_gateways_starting_at_once_migrate_once(fresh_url: str, tmp_path: Path) -> None:
    stores = await asyncio.gather(*(open_store(fresh_url, tmp_path) for _ in range(4)))
    for store in stores:
        await store.close()
    assert versions(fresh_url) == [(m.version, m.name) for m in MIGRATIONS]


async def test_a_failing_migration_leaves_nothing_behind(fresh_url: str, tmp_path: Path) -> None:
    broken = Migration(len(MIGRATIONS) + 1, "broken", ("CREATE TABLE half_done (a INTEGER)", "NOT SQL AT ALL"))
    with pytest.raises(Exception, match="syntax error"):
        await open_at_version(fresh_url, (*MIGRATIONS, broken))
    # One transaction: the migrations before the broken one are rolled back with it.
    assert tables(fresh_url) == set()
    await (await open_store(fresh_url, tmp_path)).close()
    assert versions(fresh_url) == [(m.version, m.name) for m in MIGRATIONS]
