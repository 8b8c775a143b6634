"""Retry policy as data: how many times a task is tried again, and after how long."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """Retries of one pool or command: exponential backoff, then the parking lot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Retries after the first attempt; 0 parks (or fails) a task on its first failure.
    max_retries: int = Field(default=3, ge=0, le=100)
    #: Seconds before the first retry.
    backoff: float = Field(default=1.0, ge=0.01, le=86_400)
    #: Each retry waits this many times longer than the one before (1 s, 4 s, 16 s).
    factor: float = Field(default=4.0, ge=1.0, le=100)
    #: No retry waits longer than this.
    max_delay: float = Field(default=3600.0, ge=0.01, le=7 * 86_400)
    #: Whether a handler's ordinary exception is retried (RetryLater always is, NeverRetry never).
    retry_errors: bool = True

    def delay_ms(self, attempt: int) -> int | None:
        """Milliseconds before the attempt after `attempt` (1-based), None when none is left."""
        if attempt > self.max_retries:
            return None
        seconds = min(self.backoff * self.factor ** (attempt - 1), self.max_delay)
        return max(10, round(seconds * 1000))


class RetryPolicies(BaseModel):
    """The default policy, overridden per pool, and per command within any pool.

    Set with ``RELAY_RETRY`` as JSON, e.g.
    ``{"default": {"max_retries": 5}, "pools": {"child_bazi": {"backoff": 2}},
    "cmds": {"verify_chart": {"max_retries": 0}}}``. The most specific one applies whole.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: RetryPolicy = RetryPolicy()
    pools: dict[str, RetryPolicy] = Field(default_factory=dict)
    cmds: dict[str, RetryPolicy] = Field(default_factory=dict)

    def for_task(self, pool: str, cmd: str | None) -> RetryPolicy:
        if cmd is not None and cmd in self.cmds:
            return self.cmds[cmd]
        return self.pools.get(pool, self.default)

    def delays_ms(self, pool: str) -> set[int]:
        """Every wait between attempts a task of `pool` may get (RetryLater's own aside)."""
        policies = [self.pools.get(pool, self.default), *self.cmds.values()]
        waits = (p.delay_ms(attempt) for p in policies for attempt in range(1, p.max_retries + 1))
        return {wait for wait in waits if wait is not None}
