"""PostgreSQL backend, for several gateways sharing one database: psycopg 3, async, pooled.

Connections are in autocommit mode, so a single statement costs one round trip; the few
operations of several statements run in an explicit transaction.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .migrations import MIGRATIONS, Migration
from .sql import Params, Row, Session, Store, utc

# Held for the length of a migration transaction; the value spells "baponi" in ASCII.
_MIGRATION_LOCK = 0x62_61_70_6F_6E_69


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """`?` to psycopg's `%s`. The store's SQL has no `?` of its own (no jsonb `?` operators)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _bind(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, dict):
        return Jsonb(value)
    return value


class _PostgresSession(Session):
    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self._connection.execute(_placeholders(sql), [_bind(p) for p in params])
        return await cursor.fetchall()

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._connection.execute(_placeholders(sql), [_bind(p) for p in params])
        return cursor.rowcount


class PostgresStore(Store):
    column_types: ClassVar[Mapping[str, str]] = {"timestamp": "TIMESTAMPTZ", "json": "JSONB", "bytes": "BYTEA"}
    claim_rows: ClassVar[str] = " FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, migrations: Sequence[Migration] = MIGRATIONS, *, max_connections: int = 10
    ) -> PostgresStore:
        # One plain connection first: an unreachable or misconfigured database fails now, with
        # libpq's reason, where the pool would retry quietly until its timeout.
        await (await psycopg.AsyncConnection.connect(url, connect_timeout=10)).close()
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
        )
        store = cls(pool)
        try:
            await pool.open(wait=True)
            await store._migrate(migrations)
        except BaseException:
            await store.close()
            raise
        return store

    @contextlib.asynccontextmanager
    async def _session(self, *, transaction: bool = False) -> AsyncIterator[Session]:
        async with (
            self._pool.connection() as connection,
            connection.transaction() if transaction else contextlib.nullcontext(),
        ):
            yield _PostgresSession(connection)

    async def _lock_migrations(self, session: Session) -> None:
        """A transaction-level advisory lock: released by the commit, or by the connection's end."""
        await session.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])

    @staticmethod
    def _load_time(value: datetime) -> datetime:
        return value.astimezone(UTC)

    @staticmethod
    def _load_json(value: dict[str, str]) -> dict[str, str]:
        return value

    @staticmethod
    def _metadata_filter(metadata: Mapping[str, str]) -> tuple[str, list[Any]]:
        """jsonb containment: one condition for all pairs."""
        return "executions.metadata @> ?", [dict(metadata)]

    async def close(self) -> None:
        await self._pool.close()
