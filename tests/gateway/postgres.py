"""A throwaway database on this machine's PostgreSQL, for the store and gateway tests.

These tests are never skipped: an unreachable server fails them, saying how to start it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

ADMIN_URL = os.environ.get("BAPONI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin(sql: str) -> None:
    """Run `sql` on the server's own database."""
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL}: {error}\n"
            "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            " (or sudo ./scripts/services.sh)",
            pytrace=False,
        )


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A database of its own, dropped afterwards; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin(f"DROP DATABASE {name} WITH (FORCE)")
