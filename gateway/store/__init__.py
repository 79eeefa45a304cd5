"""The gateway's state: API keys, the audit log, thread locks and webhook deliveries.

One interface (`Store`), two backends: SQLite for one machine, PostgreSQL when several
gateways share state. `open_store` picks one from the database URL and migrates it.
"""

from __future__ import annotations

from pathlib import Path

from .models import ApiKey, Execution, WebhookDelivery
from .postgres import PostgresStore
from .sql import Store
from .sqlite import SqliteStore

__all__ = ["ApiKey", "Execution", "Store", "WebhookDelivery", "open_store"]

_SQLITE = "sqlite:///"
_ACCEPTED = (
    "postgresql://user:password@host:5432/database (or postgres://...), "
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "or none for SQLite at <data_dir>/baponi.db"
)


async def open_store(url: str | None, data_dir: Path) -> Store:
    """The store `url` (BAPONI_DATABASE_URL) names, its schema migrated to the latest version."""
    if url is None:
        return await SqliteStore.open(data_dir / "baponi.db")
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url)
    if url.startswith(_SQLITE) and len(url) > len(_SQLITE):
        return await SqliteStore.open(Path(url[len(_SQLITE) :]))
    scheme, separator, _ = url.partition("://")  # only the scheme is repeated: a URL may hold a password
    raise ValueError(
        f"unsupported database URL (scheme {scheme if separator else 'missing'!r}); accepted forms: {_ACCEPTED}"
    )
