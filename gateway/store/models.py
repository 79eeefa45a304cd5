"""The records the gateway keeps: API keys, the audit log of executions, webhook deliveries.

Plain frozen dataclasses, identical whichever database holds them. Every datetime is
timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ApiKey:
    """What a key allows. Its secret is never kept: only a hash, and `prefix` for display."""

    id: str
    name: str
    sandbox: str
    prefix: str
    env: dict[str, str]
    max_concurrent: int
    rate_per_minute: int
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Execution:
    """One audit record. `code`, `stdout` and `stderr` are kept only when the gateway passes them."""

    id: str
    key_id: str
    sandbox: str
    language: str
    thread_id: str | None
    metadata: dict[str, str]
    exit_code: int | None
    success: bool
    duration_ms: float
    stdout_bytes: int
    stderr_bytes: int
    timed_out: bool
    oom_killed: bool
    error: str | None
    started_at: datetime
    finished_at: datetime
    code: str | None = None
    stdout: str | None = None
    stderr: str | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """A claimed delivery. `attempts` counts this one; unless marked, it is due again at `next_attempt_at`."""

    id: str
    execution_id: str
    key_id: str
    url: str
    body: bytes
    attempts: int
    next_attempt_at: datetime
