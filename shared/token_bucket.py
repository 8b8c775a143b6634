"""A token bucket: `rate` tokens a second, up to `burst` saved; a use takes one.

The API limits sends per key and failed authentications per client with one per name
(services/api/limits.py); the tracker limits its early batches with one
(services/tracker/batching.py).
"""

from __future__ import annotations

import math


class TokenBucket:
    """Starts full. A rate of 0 never refills: what is saved is all there is."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        #: When it was last refilled (None: never used, full).
        self.updated: float | None = None

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is), without taking it."""
        self._refill(now)
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate if self.rate > 0 else math.inf

    def take(self, now: float) -> float:
        """Take a token: 0 if one was taken, else the seconds until one is there."""
        wait = self.wait(now)
        if wait == 0:
            self.tokens -= 1
        return wait

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst
