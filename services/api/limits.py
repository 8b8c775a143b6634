"""Rate limits per name: sends per key, failed authentications per client, progress per task.

Per API process by default (a token bucket per name, in memory). With RELAY_LIMITS_URL, in
Redis instead, shared by every API replica (the `limits` library's sliding window counter):
N replicas then allow the limit once, not N times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from shared import metrics
from shared.settings import ApiSettings
from shared.token_bucket import TokenBucket

log = logging.getLogger(__name__)

#: Progress reports over HTTP: one a second per task, two at once (a child's own go on the bus,
#: as many: RELAY_PROGRESS_EVERY).
PROGRESS_RATE, PROGRESS_BURST = 1.0, 2.0
#: The longest a limit waits for Redis before it lets the request through.
SHARED_TIMEOUT_S = 0.5
#: Redis unreachable is said at most this often.
_WARN_EVERY_S = 10.0


class Limits(Protocol):
    """A rate limit per name."""

    async def take(self, name: str) -> int:
        """0 if allowed (a use is counted), else whole seconds to wait (for Retry-After)."""

    async def blocked(self, name: str) -> int:
        """Seconds until `name` may go again, without counting a use (0: it may)."""


class Limiter:
    """One token bucket per name, in this process; full buckets are forgotten when there are
    too many."""

    def __init__(self, rate: float, burst: float, max_names: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_names = max_names
        self._buckets: dict[str, TokenBucket] = {}

    async def take(self, name: str) -> int:
        return self.take_now(name)

    async def blocked(self, name: str) -> int:
        return self.blocked_now(name)

    def take_now(self, name: str, now: float | None = None) -> int:
        """0 if allowed, else whole seconds to wait (for Retry-After). A rate of 0: no limit."""
        if self.rate <= 0:
            return 0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.max_names:
                self._forget_full(now)
            bucket = self._buckets[name] = TokenBucket(self.rate, self.burst)
        return math.ceil(bucket.take(now))

    def blocked_now(self, name: str, now: float | None = None) -> int:
        """Seconds until `name` has a token again, without taking one (0: it has)."""
        bucket = self._buckets.get(name)
        if bucket is None or self.rate <= 0:
            return 0
        return math.ceil(bucket.wait(time.monotonic() if now is None else now))

    def _forget_full(self, now: float) -> None:
        for name in [n for n, b in self._buckets.items() if b.full(now)]:
            del self._buckets[name]
        if len(self._buckets) >= self.max_names:  # all busy: forget the least recently used
            oldest = min(self._buckets, key=lambda n: self._buckets[n].updated or 0.0)
            del self._buckets[oldest]


class SharedStore:
    """The Redis that every API replica counts in (RELAY_LIMITS_URL); keys under the namespace."""

    def __init__(self, url: str, namespace: str) -> None:
        self.pool = redis.asyncio.ConnectionPool.from_url(
            url, socket_timeout=SHARED_TIMEOUT_S, socket_connect_timeout=SHARED_TIMEOUT_S
        )
        storage = RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=f"convbus:{namespace}:limits",
            wrap_exceptions=True,
            # Documented, not typed: ours, so that close() can let its connections go.
            connection_pool=self.pool,  # type: ignore[arg-type]
        )
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._warned_at = -math.inf

    def unavailable(self, exc: BaseException) -> None:
        """Redis did not answer: the request goes through (a limit is a guard, not a gate)."""
        metrics.API_LIMITS_UNAVAILABLE.inc()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("rate limits not checked, Redis unavailable: %r", exc)

    async def close(self) -> None:
        await self.pool.disconnect()


class SharedLimiter:
    """A limit counted in Redis by every replica: `burst` uses in any window of `burst / rate`
    seconds (sliding), so `rate` a second in the long run, as the per-process bucket allows."""

    def __init__(self, store: SharedStore, kind: str, rate: float, burst: float) -> None:
        self.store = store
        self.kind = kind
        self.rate = rate
        window = max(1, math.ceil(burst / rate)) if rate > 0 else 1
        self.item = RateLimitItemPerSecond(max(1, round(rate * window)), window)
        #: What a refused use waits: the window frees one use in about 1/rate seconds.
        self.retry_after = max(1, math.ceil(1 / rate)) if rate > 0 else 1

    async def take(self, name: str) -> int:
        return await self._ask(self.store.limiter.hit, name)

    async def blocked(self, name: str) -> int:
        return await self._ask(self.store.limiter.test, name)

    async def _ask(self, check: Callable[..., Awaitable[bool]], name: str) -> int:
        """0 if `check` (hit: count a use; test: only look) allows `name`, else Retry-After;
        0 too when Redis does not answer."""
        if self.rate <= 0:
            return 0
        try:
            async with asyncio.timeout(SHARED_TIMEOUT_S):
                allowed = await check(self.item, self.kind, name)
        except (StorageError, TimeoutError) as exc:
            self.store.unavailable(exc)
            return 0
        return 0 if allowed else self.retry_after


@dataclass
class RateLimits:
    """The API's limits, per process or shared (RELAY_LIMITS_URL)."""

    sends: Limits
    auth_failures: Limits
    #: Progress reports over HTTP, per task.
    progress: Limits
    #: The shared store, when there is one.
    store: SharedStore | None = None

    @classmethod
    def of(cls, settings: ApiSettings) -> RateLimits:
        sends = (settings.send_rate, settings.send_burst)
        auth_failures = (settings.auth_failure_rate, settings.auth_failure_burst)
        progress = (PROGRESS_RATE, PROGRESS_BURST)
        if settings.limits_url is None:
            return cls(Limiter(*sends), Limiter(*auth_failures), Limiter(*progress))
        store = SharedStore(settings.limits_url.get_secret_value(), settings.namespace)
        return cls(
            SharedLimiter(store, "sends", *sends),
            SharedLimiter(store, "auth_failures", *auth_failures),
            SharedLimiter(store, "progress", *progress),
            store,
        )

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
