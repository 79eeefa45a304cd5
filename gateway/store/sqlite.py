"""SQLite backend, for one machine: one connection, used from the event loop itself.

A statement here takes tens of microseconds (WAL, no fsync per commit), less than handing it
to a worker thread and back, which cost every execution ~1 ms in two hops. WAL readers never
wait for a writer; a write waits only for another process's transaction (the `baponi keys`
CLI: a few statements) and for the occasional WAL checkpoint. An asyncio lock keeps one
caller's transaction from interleaving with another's. Several processes on the same file
are safe: transactions take SQLite's write lock (BEGIN IMMEDIATE) and wait for it up to the
busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from .keys import hash_secret
from .migrations import MIGRATIONS, Migration
from .models import ApiKey
from .sql import Params, Row, Session, Store, utc

_PRAGMAS = (
    "journal_mode = WAL",  # readers do not wait for the writer
    "synchronous = NORMAL",  # with WAL: a crashed process loses nothing; a power cut, the last commits
    "foreign_keys = ON",
    "busy_timeout = 5000",
)
_KEYS_KEPT = 1024  # live keys remembered by secret hash; past that, the lookups are queries again


def _connect(path: Path) -> sqlite3.Connection:
    """The file is created 0600 before SQLite opens it (its -wal and -shm files take the same
    mode): it holds key hashes and the audit log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    connection = sqlite3.connect(path, isolation_level=None)  # autocommit; transactions are explicit
    connection.row_factory = lambda cursor, row: dict(zip([c[0] for c in cursor.description], row, strict=True))
    for pragma in _PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _bind(value: Any) -> Any:
    """Datetimes as fixed-width ISO text in UTC, which sorts as the times do; dicts as JSON."""
    if isinstance(value, datetime):
        return utc(value).isoformat(timespec="microseconds")
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


class _SqliteSession(Session):
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return self._store._connection.execute(sql, [_bind(p) for p in params]).fetchall()

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self._store._connection.execute(sql, [_bind(p) for p in params]).rowcount


class SqliteStore(Store):
    column_types: ClassVar[Mapping[str, str]] = {"timestamp": "TEXT", "json": "TEXT", "bytes": "BLOB"}

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()
        self._keys: dict[str, ApiKey] = {}  # by secret hash, as of _keys_version
        self._keys_version: int | None = None

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> SqliteStore:
        store = cls(_connect(path))
        try:
            await store._migrate(migrations)
        except BaseException:
            await store.close()
            raise
        return store

    @asynccontextmanager
    async def _session(self, *, transaction: bool = False) -> AsyncIterator[Session]:
        async with self._lock:
            if not transaction:
                yield _SqliteSession(self)
                return
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteSession(self)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    async def key_by_secret(self, secret: str) -> ApiKey | None:
        """Live keys are remembered while no other connection has written to the database
        (PRAGMA data_version, ~3 us) and this one has revoked none: every call looks its key
        up, and the query and the loading of its row cost ~0.15 ms of a call's latency. Unknown
        secrets are never remembered."""
        version = self._connection.execute("PRAGMA data_version").fetchone()["data_version"]
        if version != self._keys_version:
            self._keys.clear()
            self._keys_version = version
        digest = hash_secret(secret)
        key = self._keys.get(digest)
        if key is None:
            key = await super().key_by_secret(secret)
            if key is not None and len(self._keys) < _KEYS_KEPT:
                self._keys[digest] = key
        return key

    async def revoke_key(self, key_id: str) -> bool:
        revoked = await super().revoke_key(key_id)
        self._keys.clear()  # this connection's own writes leave data_version as it is
        return revoked

    async def _lock_migrations(self, session: Session) -> None:
        """BEGIN IMMEDIATE already holds the database's write lock."""

    @staticmethod
    def _load_time(value: str) -> datetime:
        return datetime.fromisoformat(value)

    @staticmethod
    def _load_json(value: str) -> dict[str, str]:
        loaded: dict[str, str] = json.loads(value)
        return loaded

    @staticmethod
    def _metadata_filter(metadata: Mapping[str, str]) -> tuple[str, list[Any]]:
        """json_each rather than json_extract: a key may hold any character, quotes and dots too."""
        pair = "EXISTS (SELECT 1 FROM json_each(executions.metadata) AS m WHERE m.key = ? AND m.value = ?)"
        return " AND ".join([pair] * len(metadata)), [item for kv in metadata.items() for item in kv]

    async def close(self) -> None:
        self._connection.close()
