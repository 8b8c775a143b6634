"""Token buckets: per key on send, per client on failed authentications (per API process)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`rate` tokens a second, up to `burst`; a request takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.updated) * self.rate >= self.burst


class Limiter:
    """One bucket per name; full buckets are forgotten when there are too many."""

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
            bucket = self._buckets[name] = TokenBucket(self.rate, self.burst, self.burst, now)
        wait = bucket.take(now)
        return math.ceil(wait) if wait > 0 else 0

    def blocked(self, name: str, now: float | None = None) -> int:
        """Seconds until `name` has a token again, without taking one (0: it has)."""
        bucket = self._buckets.get(name)
        if bucket is None or self.rate <= 0:
            return 0
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        return 0 if tokens >= 1 else math.ceil((1 - tokens) / self.rate)

    def _forget_full(self, now: float) -> None:
        for name in [n for n, b in self._buckets.items() if b.full(now)]:
            del self._buckets[name]
        if len(self._buckets) >= self.max_names:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda n: self._buckets[n].updated)
            del self._buckets[oldest]
