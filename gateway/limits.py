"""Per-key limits: concurrent executions and a rate, both counted in this process.

With several gateway replicas each one enforces the key's limits on its own, so a key can reach
up to N times them across N replicas; a shared count would put a database round trip on every
call. The rate is a token bucket holding `rate_per_minute` tokens and refilling continuously,
so a burst of a whole minute's worth is allowed and a throttled key recovers token by token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .errors import ConcurrencyLimit, RateLimited
from .store import ApiKey


class TokenBucket:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self.clock = clock
        self.updated = clock()

    def take(self) -> float:
        """Takes a token and returns 0, or returns the seconds until one is there."""
        now = self.clock()
        self.tokens = min(self.per_minute, self.tokens + (now - self.updated) * self.per_minute / 60)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute if self.per_minute > 0 else 60.0


class Slot:
    """One admitted execution; `release` gives the key's concurrency back (once)."""

    def __init__(self, limiter: Limiter, key_id: str) -> None:
        self._limiter, self._key_id = limiter, key_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.running[self._key_id] -= 1


class Limiter:
    def __init__(self, *, retry_after_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.running: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, key: ApiKey) -> Slot:
        """A slot for one execution of `key`, or 429: concurrency is checked first, so a call
        refused for it spends no token."""
        running = self.running.get(key.id, 0)
        if running >= key.max_concurrent:
            raise ConcurrencyLimit(
                f"this API key already runs {running} executions, its maximum; retry when one ends",
                retry_after=self.retry_after_s,
            )
        bucket = self.buckets.get(key.id)
        if bucket is None or bucket.per_minute != key.rate_per_minute:
            bucket = self.buckets[key.id] = TokenBucket(key.rate_per_minute, self.clock)
        wait = bucket.take()
        if wait:
            raise RateLimited(
                f"this API key is limited to {key.rate_per_minute} executions a minute; retry later",
                retry_after=max(1, math.ceil(wait)),
            )
        self.running[key.id] = running + 1
        return Slot(self, key.id)
