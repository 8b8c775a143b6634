"""Waiting out an outage: every reconnect and resend of the bus retries by one policy.

Exponential backoff (a fixed interval with `factor` 1) with jitter: each wait is its base delay
plus up to a quarter more, at random, so that the processes that lost the same broker, database
or API do not all come back in step. One log line per failed attempt, saying when the next
comes; a stop event ends the waiting at once.

(tenacity does the same, but its retry object cost 23 µs per call on the path that succeeds at
once: 4 % of a child's CPU per task, for the callback every task makes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Errors = type[BaseException] | tuple[type[BaseException], ...]

#: A wait is its base delay plus up to this share of it, at random.
JITTER = 0.25


@dataclass(frozen=True)
class Backoff:
    """Waits of `first` seconds, then `factor` times longer each, at most `cap` (None: no cap)."""

    first: float = 1.0
    factor: float = 2.0
    cap: float | None = 10.0

    def base(self, failures: int) -> float:
        """The wait after the `failures`-th failed attempt in a row, before jitter."""
        delay = self.first * self.factor ** (failures - 1)
        return delay if self.cap is None else min(delay, self.cap)

    def wait(self, failures: int) -> float:
        """The wait after the `failures`-th failed attempt in a row, jitter included."""
        return self.base(failures) * (1 + random.uniform(0, JITTER))


async def retry(
    attempt: Callable[[int], Awaitable[T]],
    errors: Errors,
    backoff: Backoff,
    *,
    log: logging.Logger,
    what: str,
    attempts: int | None = None,
    stop: asyncio.Event | None = None,
    level: int = logging.WARNING,
) -> T:
    """`await attempt(n)` (n = 1, 2, …) until it returns, waiting out each failure that raises
    one of `errors` (logged: `what`, the error, the wait); other exceptions pass at once.

    The last failure is raised once `attempts` are used up, or once `stop` is set (which also
    cuts a wait short).
    """
    failures = 0
    while True:
        try:
            return await attempt(failures + 1)
        except errors as exc:
            failures += 1
            if (attempts is not None and failures >= attempts) or _set(stop):
                raise
            delay = backoff.wait(failures)
            of = f"/{attempts}" if attempts is not None else ""
            log.log(level, "%s (attempt %d%s): %s; retrying in %.1f s", what, failures, of,
                    exc, delay)  # fmt: skip
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if _set(stop):
                raise


def retry_blocking(
    attempt: Callable[[], T],
    again: Callable[[BaseException], bool],
    backoff: Backoff,
    *,
    for_seconds: float,
) -> T:
    """`attempt()` until it returns, for up to `for_seconds`, waiting out each exception for
    which `again` says so; the last one is raised when the time is up."""
    deadline = time.monotonic() + for_seconds
    failures = 0
    while True:
        try:
            return attempt()
        except Exception as exc:
            failures += 1
            if not again(exc) or time.monotonic() > deadline:
                raise
            time.sleep(backoff.wait(failures))


def _set(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()
