"""Gateway settings: limits and timings with their defaults, and the webhook master secret.

The master secret signs every key's webhooks. Each key's signing secret is derived from it
(HMAC-SHA256 of the key id), so no per-key secret is stored and every replica that shares the
master secret (env BAPONI_WEBHOOK_MASTER_SECRET, or the same file) signs alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20
MASTER_SECRET_ENV = "BAPONI_WEBHOOK_MASTER_SECRET"
MASTER_SECRET_FILE = "webhook-master-secret"
_MIN_SECRET = 32


@dataclass(frozen=True)
class Settings:
    """What one gateway process is configured with; every field but the secret has a default."""

    webhook_master_secret: bytes
    max_body_bytes: int = 2 * MIB
    default_timeout: float = 60.0
    # A thread lock outlives its gateway by at most this long; it is refreshed while the code runs.
    thread_lock_ttl_s: float = 30.0
    # Retry-After for answers that have no better estimate (no agent, concurrency limit).
    retry_after_s: int = 1
    webhook_attempts: int = 8
    webhook_backoff_s: float = 1.0  # first retry after this, then doubling
    webhook_timeout_s: float = 10.0
    webhook_poll_s: float = 2.0  # how often the store is asked for retries and other replicas' leftovers
    deliver_webhooks: bool = True
    # On shutdown, running executions get this long to end before they are cancelled.
    shutdown_grace_s: float = 25.0
    # An agent reports the end of the code by its timeout (it kills it then) plus sandbox work
    # (start, home archive). Past this much more, the call is ended here: its lock and slot freed.
    result_grace_s: float = 30.0

    @classmethod
    def load(cls, data_dir: Path, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        return cls(webhook_master_secret=load_master_secret(data_dir, environ), **overrides)

    def webhook_secret_for(self, key_id: str) -> str:
        """The secret a key's owner verifies `Baponi-Signature` with (hex; used as UTF-8 bytes)."""
        return hmac.new(self.webhook_master_secret, key_id.encode(), hashlib.sha256).hexdigest()


def load_master_secret(data_dir: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """The env variable if set, else `data_dir/webhook-master-secret`, created 0600 on first start."""
    if value := environ.get(MASTER_SECRET_ENV):
        if len(value) < _MIN_SECRET:
            raise ValueError(f"{MASTER_SECRET_ENV} must be at least {_MIN_SECRET} characters long")
        return value.encode()
    path = data_dir / MASTER_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written aside and linked into place, so two processes starting at once agree on one secret.
        staged = data_dir / f".{MASTER_SECRET_FILE}.{os.getpid()}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(staged, path)
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is accessible to other users; make it private with chmod 600")
    secret = path.read_bytes().strip()
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"{path} must hold at least {_MIN_SECRET} characters")
    return secret
