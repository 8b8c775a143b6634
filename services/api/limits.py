"""Rate limits per name: sends per key, failed authentications per client (per API process)."""

from __future__ import annotations

import math
import time

from shared.token_bucket import TokenBucket

#: Progress reports over HTTP: one a second per task, two at once (a child's own go on the bus,
#: as many: RELAY_PROGRESS_EVERY).
PROGRESS_RATE, PROGRESS_BURST = 1.0, 2.0


class Limiter:
    """One token bucket per name; full buckets are forgotten when there are too many."""

    def __init__(self, rate: float, burst: float, max_names: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_names = max_names
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, name: str, now: float | None = None) -> int:
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

    def blocked(self, name: str, now: float | None = None) -> int:
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
