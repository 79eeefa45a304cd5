"""Asynchronous results: queued in the store, POSTed signed, retried with exponential backoff.

The queue is the store, so a delivery survives a restart and any replica may send it; a claim
is a lease, so it is sent at least once (receivers deduplicate on `Baponi-Execution-Id`).
Each attempt is signed afresh: `Baponi-Signature: t=<unix seconds>,v1=<hex>` where v1 is
HMAC-SHA256, keyed with the key's webhook secret (`Settings.webhook_secret_for`), of
`"<t>.<body>"`; receivers check it and refuse stale timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import httpx
import structlog

from .errors import ApiError
from .settings import Settings
from .store import Store, WebhookDelivery

if TYPE_CHECKING:
    from .runs import Run

log = structlog.get_logger("baponi.webhooks")
_BATCH = 20
_MAX_ERROR = 500


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


async def send_result(run: Run, store: Store, url: str, deliverer: Deliverer) -> None:
    """Waits for the run's answer (or error, with its execution id) and queues it for `url`."""
    try:
        body = (await run.outcome()).model_dump_json().encode()
    except ApiError as error:
        body = json.dumps({"execution_id": run.execution_id, **error.body()}).encode()
    try:
        await store.enqueue_webhook(run.execution_id, run.key.id, url, body)
    except Exception as exc:  # noqa: BLE001 - nothing to answer to any more; say so in the log
        log.error("could not queue a webhook delivery", execution_id=run.execution_id, exc_info=exc)
        return
    deliverer.wake()


class Deliverer:
    """The loop that sends due deliveries; woken when one is queued, else polling the store."""

    def __init__(self, store: Store, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.store, self.settings, self.transport = store, settings, transport
        self._wake = asyncio.Event()
        self._soonest: datetime | None = None  # the earliest retry this process scheduled

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            transport=self.transport, timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            while True:
                self._wake.clear()
                try:
                    if await self.deliver_due(client) == _BATCH:
                        continue  # more may be due
                except Exception as exc:  # noqa: BLE001 - the store may come back; keep polling
                    log.error("webhook delivery round failed", exc_info=exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._wait_s())

    def _wait_s(self) -> float:
        wait = self.settings.webhook_poll_s
        if self._soonest is not None:
            wait = min(wait, max(0.0, (self._soonest - datetime.now(timezone.utc)).total_seconds()))
        return wait

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        now = datetime.now(timezone.utc)
        if self._soonest is not None and self._soonest <= now:
            self._soonest = None
        due = await self.store.due_webhooks(now, _BATCH, lease_s=self.settings.webhook_timeout_s + 30)
        await asyncio.gather(*(self._attempt(client, delivery) for delivery in due))
        return len(due)

    async def _attempt(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Baponi-Webhooks/1",
            "Baponi-Execution-Id": delivery.execution_id,
            "Baponi-Signature": signature(
                self.settings.webhook_secret_for(delivery.key_id), delivery.body, int(time.time())
            ),
        }
        try:
            # Streamed and closed unread: a receiver's answer body is of no interest, whatever its size.
            async with client.stream("POST", delivery.url, content=delivery.body, headers=headers) as response:
                status = response.status_code
        except Exception as exc:  # noqa: BLE001 - any failure to send is a failed attempt, retried
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                await self.store.mark_webhook(delivery.id, delivered=True)
                return
            problem = f"the receiver answered HTTP {status}"
        retry_at = None
        if delivery.attempts < self.settings.webhook_attempts:
            delay = self.settings.webhook_backoff_s * 2 ** (delivery.attempts - 1)
            retry_at = datetime.now(timezone.utc) + timedelta(seconds=delay)
            self._soonest = min(self._soonest or retry_at, retry_at)
        log.warning(
            "webhook attempt failed",
            delivery_id=delivery.id,
            execution_id=delivery.execution_id,
            attempt=delivery.attempts,
            problem=problem,
            gave_up=retry_at is None,
        )
        await self.store.mark_webhook(
            delivery.id, delivered=False, next_attempt_at=retry_at, error=problem[:_MAX_ERROR]
        )
