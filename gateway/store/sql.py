"""The store's one interface and its SQL, written once for both backends.

Queries use `?` placeholders; a backend's `Session` turns them into its own style and its own
parameter types (datetimes, JSON), and the backend says how values come back. What is left
that differs between SQLite and PostgreSQL is small and named here as abstract members:
column types, row locking, the metadata filter and the migration lock.
"""

from __future__ import annotations

import typing
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, TypeVar

import structlog

from .keys import check_secret, display_prefix, hash_secret, new_secret
from .migrations import MIGRATIONS, Migration, migrate
from .models import ApiKey, Execution, WebhookDelivery

log = structlog.get_logger("baponi.store")

Row = Mapping[str, Any]
Params = Sequence[Any]
Model = TypeVar("Model", ApiKey, Execution, WebhookDelivery)


class Session(Protocol):
    """One connection, held for the length of a `Store._session` block."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Runs a statement; returns the number of rows it changed."""
        ...


def utc(value: datetime) -> datetime:
    """Naive datetimes are refused: the two backends would read them differently."""
    if value.utcoffset() is None:
        raise ValueError(f"the store takes timezone-aware datetimes only, got {value.isoformat()}")
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _columns(model: type[Model]) -> str:
    return ", ".join(f.name for f in fields(model))


def _values(record: ApiKey | Execution) -> list[Any]:
    return [getattr(record, f.name) for f in fields(record)]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _decoded_columns(model: type[Any]) -> dict[str, str]:
    """Columns whose database value needs decoding into the model's type: 'time', 'json' or 'bool'."""
    kinds = {datetime: "time", datetime | None: "time", dict[str, str]: "json", bool: "bool"}
    return {name: kinds[hint] for name, hint in typing.get_type_hints(model).items() if hint in kinds}


_DECODED = {model: _decoded_columns(model) for model in (ApiKey, Execution, WebhookDelivery)}


class Store(ABC):
    """Keys, the audit log, thread locks and webhook deliveries of the gateway.

    Every method is one short transaction, so any number of gateways can share a PostgreSQL
    database. All datetimes taken and returned are timezone-aware UTC.
    """

    column_types: ClassVar[Mapping[str, str]]  # fills {timestamp}, {json}, {bytes} in migrations
    claim_rows: ClassVar[str] = ""  # appended to the SELECT that claims webhook deliveries

    # -- what a backend provides

    @abstractmethod
    def _session(self, *, transaction: bool = False) -> AbstractAsyncContextManager[Session]:
        """A connection; with `transaction`, one transaction that commits when the block ends."""

    @abstractmethod
    async def _lock_migrations(self, session: Session) -> None:
        """Make this transaction the only one migrating, until it ends."""

    @staticmethod
    @abstractmethod
    def _load_time(value: Any) -> datetime: ...

    @staticmethod
    @abstractmethod
    def _load_json(value: Any) -> dict[str, str]: ...

    @staticmethod
    @abstractmethod
    def _metadata_filter(metadata: Mapping[str, str]) -> tuple[str, list[Any]]:
        """A condition on `executions.metadata` holding every pair, and its parameters."""

    @abstractmethod
    async def close(self) -> None: ...

    # -- shared

    async def _migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        async with self._session(transaction=True) as session:
            await self._lock_migrations(session)
            applied = await migrate(session, self.column_types, migrations)
        for migration in applied:  # logged once committed
            log.info("schema migration applied", version=migration.version, name=migration.name)

    def _load(self, model: type[Model], row: Row) -> Model:
        decoders: dict[str, Callable[[Any], Any]] = {"time": self._load_time, "json": self._load_json, "bool": bool}
        values = dict(row)
        for name, kind in _DECODED[model].items():
            if values[name] is not None:
                values[name] = decoders[kind](values[name])
        return model(**values)

    async def _fetch(self, model: type[Model], sql: str, params: Params = ()) -> list[Model]:
        async with self._session() as session:
            return [self._load(model, row) for row in await session.fetch(sql, params)]

    async def _execute(self, sql: str, params: Params = ()) -> int:
        async with self._session() as session:
            return await session.execute(sql, params)

    # -- API keys

    async def create_key(
        self,
        name: str,
        sandbox: str,
        *,
        env: Mapping[str, str] | None = None,
        max_concurrent: int = 8,
        rate_per_minute: int = 600,
        secret: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the key and its secret, the only time the secret is seen.

        With `secret` (a bootstrap key), a secret already registered returns its key as it is,
        revoked or not, so the same bootstrap key can be passed on every start.
        """
        if secret is None:
            secret = new_secret()
        else:
            check_secret(secret)
        key = ApiKey(
            id="key_" + uuid.uuid4().hex,
            name=name,
            sandbox=sandbox,
            prefix=display_prefix(secret),
            env=dict(env or {}),
            max_concurrent=max_concurrent,
            rate_per_minute=rate_per_minute,
            created_at=_now(),
            revoked_at=None,
        )
        secret_hash = hash_secret(secret)
        async with self._session(transaction=True) as session:
            await session.execute(
                f"INSERT INTO api_keys (secret_hash, {_columns(ApiKey)}) VALUES (?, {_marks(len(fields(ApiKey)))})"
                " ON CONFLICT (secret_hash) DO NOTHING",
                [secret_hash, *_values(key)],
            )
            rows = await session.fetch(f"SELECT {_columns(ApiKey)} FROM api_keys WHERE secret_hash = ?", [secret_hash])
        return self._load(ApiKey, rows[0]), secret

    async def key_by_secret(self, secret: str) -> ApiKey | None:
        """The live key a secret belongs to; None for an unknown or revoked one."""
        keys = await self._fetch(
            ApiKey,
            f"SELECT {_columns(ApiKey)} FROM api_keys WHERE secret_hash = ? AND revoked_at IS NULL",
            [hash_secret(secret)],
        )
        return keys[0] if keys else None

    async def get_key(self, key_id: str) -> ApiKey | None:
        keys = await self._fetch(ApiKey, f"SELECT {_columns(ApiKey)} FROM api_keys WHERE id = ?", [key_id])
        return keys[0] if keys else None

    async def list_keys(self) -> list[ApiKey]:
        """All keys, revoked ones included, oldest first."""
        return await self._fetch(ApiKey, f"SELECT {_columns(ApiKey)} FROM api_keys ORDER BY created_at, id")

    async def revoke_key(self, key_id: str) -> bool:
        """False when there is no such live key."""
        changed = await self._execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [_now(), key_id]
        )
        return changed > 0

    # -- the audit log

    async def record_execution(self, execution: Execution) -> None:
        await self._execute(
            f"INSERT INTO executions ({_columns(Execution)}) VALUES ({_marks(len(fields(Execution)))})",
            _values(execution),
        )

    async def list_executions(
        self,
        key_id: str,
        *,
        metadata: Mapping[str, str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[Execution]:
        """One key's executions, newest first: started in [since, until), holding every
        `metadata` pair. For the next page pass the last id seen as `before_id`."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        conditions: list[str] = ["key_id = ?"]
        params: list[Any] = [key_id]
        if since is not None:
            conditions.append("started_at >= ?")
            params.append(since)
        if until is not None:
            conditions.append("started_at < ?")
            params.append(until)
        if before_id is not None:
            conditions.append("(started_at, id) < (SELECT started_at, id FROM executions WHERE id = ? AND key_id = ?)")
            params += [before_id, key_id]
        if metadata:
            condition, values = self._metadata_filter(metadata)
            conditions.append(condition)
            params += values
        return await self._fetch(
            Execution,
            f"SELECT {_columns(Execution)} FROM executions WHERE {' AND '.join(conditions)}"
            " ORDER BY started_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )

    # -- thread locks: one execution per thread at a time

    async def acquire_thread(self, thread_id: str, execution_id: str, ttl_s: float) -> bool:
        """False while another execution holds a lock that has not expired. An expired lock is
        taken over, so a gateway that died holding one blocks its thread for `ttl_s` at most."""
        now = _now()
        async with self._session() as session:
            rows = await session.fetch(
                "INSERT INTO thread_locks (thread_id, execution_id, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (thread_id) DO UPDATE"
                " SET execution_id = excluded.execution_id, expires_at = excluded.expires_at"
                " WHERE thread_locks.expires_at <= ? OR thread_locks.execution_id = excluded.execution_id"
                " RETURNING thread_id",
                [thread_id, execution_id, now + timedelta(seconds=ttl_s), now],
            )
        return bool(rows)

    async def refresh_thread(self, thread_id: str, execution_id: str, ttl_s: float) -> bool:
        """Extends a long call's lock; False when it is no longer this execution's."""
        changed = await self._execute(
            "UPDATE thread_locks SET expires_at = ? WHERE thread_id = ? AND execution_id = ?",
            [_now() + timedelta(seconds=ttl_s), thread_id, execution_id],
        )
        return changed > 0

    async def release_thread(self, thread_id: str, execution_id: str) -> bool:
        """Only the holder releases; False when the lock was not (or no longer) its own."""
        changed = await self._execute(
            "DELETE FROM thread_locks WHERE thread_id = ? AND execution_id = ?", [thread_id, execution_id]
        )
        return changed > 0

    # -- webhook deliveries: queued in the database, so a restart loses none

    async def enqueue_webhook(self, execution_id: str, key_id: str, url: str, body: bytes) -> str:
        """Queues a delivery, due at once; returns its id."""
        delivery_id = "whd_" + uuid.uuid4().hex
        now = _now()
        await self._execute(
            "INSERT INTO webhook_deliveries (id, execution_id, key_id, url, body, attempts, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
            [delivery_id, execution_id, key_id, url, body, now, now],
        )
        return delivery_id

    async def due_webhooks(self, now: datetime, limit: int = 100, *, lease_s: float = 60.0) -> list[WebhookDelivery]:
        """Claims up to `limit` deliveries due at `now`, earliest due first.

        A claim moves a delivery's next attempt `lease_s` ahead, so no other gateway gets it
        meanwhile; if this one dies before `mark_webhook`, the delivery is due again after the
        lease. On PostgreSQL, rows another gateway is claiming are skipped, not waited for.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        lease_until = utc(now) + timedelta(seconds=lease_s)
        async with self._session(transaction=True) as session:
            rows = await session.fetch(
                f"SELECT {_columns(WebhookDelivery)} FROM webhook_deliveries WHERE next_attempt_at <= ?"
                f" ORDER BY next_attempt_at, id LIMIT ?{self.claim_rows}",
                [now, limit],
            )
            if rows:
                await session.execute(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?"
                    f" WHERE id IN ({_marks(len(rows))})",
                    [lease_until, *(row["id"] for row in rows)],
                )
        claimed = [self._load(WebhookDelivery, row) for row in rows]
        return [replace(d, attempts=d.attempts + 1, next_attempt_at=lease_until) for d in claimed]

    async def mark_webhook(
        self, delivery_id: str, *, delivered: bool, next_attempt_at: datetime | None = None, error: str | None = None
    ) -> None:
        """Records how a claimed attempt ended: delivered; failed and due again at
        `next_attempt_at`; or, with no next attempt, failed for good."""
        if delivered and next_attempt_at is not None:
            raise ValueError("a delivered webhook has no next attempt")
        await self._execute(
            "UPDATE webhook_deliveries SET delivered_at = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            [_now() if delivered else None, next_attempt_at, error, delivery_id],
        )
