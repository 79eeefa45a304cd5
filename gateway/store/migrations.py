"""Numbered schema migrations, applied in order and recorded in `schema_migrations`.

Each migration is written once; `{timestamp}`, `{json}` and `{bytes}` stand for the column types
of the backend (see `Store.column_types`). The caller runs `migrate` inside one transaction that
it has made exclusive (an advisory lock on PostgreSQL, the write lock on SQLite), so two
gateways starting at once apply each migration exactly once, and a failed migration leaves
nothing half-done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sql import Session


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "api keys and the execution audit log",
        (
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                sandbox TEXT NOT NULL,
                prefix TEXT NOT NULL,
                env {json} NOT NULL,
                max_concurrent INTEGER NOT NULL,
                rate_per_minute INTEGER NOT NULL,
                created_at {timestamp} NOT NULL,
                revoked_at {timestamp}
            )""",
            """CREATE TABLE executions (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL REFERENCES api_keys (id),
                sandbox TEXT NOT NULL,
                language TEXT NOT NULL,
                thread_id TEXT,
                metadata {json} NOT NULL,
                exit_code INTEGER,
                success BOOLEAN NOT NULL,
                duration_ms DOUBLE PRECISION NOT NULL,
                stdout_bytes BIGINT NOT NULL,
                stderr_bytes BIGINT NOT NULL,
                timed_out BOOLEAN NOT NULL,
                oom_killed BOOLEAN NOT NULL,
                error TEXT,
                started_at {timestamp} NOT NULL,
                finished_at {timestamp} NOT NULL,
                code TEXT,
                stdout TEXT,
                stderr TEXT
            )""",
            "CREATE INDEX executions_by_key_time ON executions (key_id, started_at DESC, id DESC)",
        ),
    ),
    Migration(
        2,
        "thread locks",
        (
            """CREATE TABLE thread_locks (
                thread_id TEXT PRIMARY KEY,
                execution_id TEXT NOT NULL,
                expires_at {timestamp} NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "webhook deliveries",
        (
            """CREATE TABLE webhook_deliveries (
                id TEXT PRIMARY KEY,
                execution_id TEXT NOT NULL,
                key_id TEXT NOT NULL REFERENCES api_keys (id),
                url TEXT NOT NULL,
                body {bytes} NOT NULL,
                attempts INTEGER NOT NULL,
                next_attempt_at {timestamp},
                created_at {timestamp} NOT NULL,
                delivered_at {timestamp},
                last_error TEXT
            )""",
            # Delivered and abandoned deliveries have no next attempt and drop out of the index.
            """CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
                WHERE next_attempt_at IS NOT NULL""",
        ),
    ),
)


async def migrate(
    session: Session, column_types: Mapping[str, str], migrations: Sequence[Migration] = MIGRATIONS
) -> list[Migration]:
    """Applies the migrations not yet recorded, in order, and returns them."""
    await session.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {timestamp} NOT NULL)".format(**column_types)
    )
    done = {row["version"] for row in await session.fetch("SELECT version FROM schema_migrations")}
    pending = sorted((m for m in migrations if m.version not in done), key=lambda m: m.version)
    for migration in pending:
        for statement in migration.statements:
            await session.execute(statement.format(**column_types))
        await session.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, datetime.now(UTC)),
        )
    return pending
