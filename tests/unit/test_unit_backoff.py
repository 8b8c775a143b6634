"""shared/backoff.py: one retry policy for every reconnect and resend, with jitter."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from shared.backoff import JITTER, Backoff, retry, retry_blocking

log = logging.getLogger("test.backoff")


def test_waits_grow_by_the_factor_up_to_the_cap() -> None:
    policy = Backoff(first=1.0, factor=2.0, cap=10.0)
    assert [policy.base(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert Backoff(first=0.5, factor=1.0).base(9) == 0.5
    assert Backoff(first=1.0, factor=2.0, cap=None).base(11) == 1024


def test_each_wait_is_the_base_plus_up_to_a_quarter_at_random() -> None:
    policy = Backoff(first=1.0, factor=2.0)
    waits = [policy.wait(3) for _ in range(2000)]
    assert all(4.0 <= w <= 4.0 * (1 + JITTER) for w in waits)
    assert len(set(waits)) > 1000  # not in step
    assert max(waits) - min(waits) > 0.8


class Flaky:
    """Fails `failures` times with `error`, then answers the attempt number."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[int] = []

    async def __call__(self, attempt: int) -> int:
        self.calls.append(attempt)
        if len(self.calls) <= self.failures:
            raise self.error
        return attempt


FAST = Backoff(first=0.001, factor=2.0)


async def test_retry_waits_out_failures_one_log_line_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    flaky = Flaky(2, ConnectionError("refused"))
    assert await retry(flaky, ConnectionError, FAST, log=log, what="broker down") == 3
    assert flaky.calls == [1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("broker down (attempt 1): refused; retrying in 0.0 s")


async def test_retry_gives_up_after_its_attempts_with_the_last_error() -> None:
    flaky = Flaky(5, ConnectionError("refused"))
    with pytest.raises(ConnectionError, match="refused"):
        await retry(flaky, ConnectionError, FAST, log=log, what="x", attempts=3)
    assert flaky.calls == [1, 2, 3]


async def test_other_errors_pass_at_once() -> None:
    flaky = Flaky(5, KeyError("bug"))
    with pytest.raises(KeyError):
        await retry(flaky, ConnectionError, FAST, log=log, what="x")
    assert flaky.calls == [1]


async def test_a_stop_cuts_the_wait_short_and_raises_the_last_error() -> None:
    stop = asyncio.Event()
    flaky = Flaky(5, ConnectionError("refused"))
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await retry(flaky, ConnectionError, Backoff(first=30), log=log, what="x", stop=stop)
    assert time.monotonic() - started < 5
    assert flaky.calls == [1]


async def test_a_stop_set_before_a_failure_ends_it_without_a_wait() -> None:
    stop = asyncio.Event()
    stop.set()
    flaky = Flaky(5, ConnectionError("refused"))
    with pytest.raises(ConnectionError):
        await retry(flaky, ConnectionError, Backoff(first=30), log=log, what="x", stop=stop)
    assert flaky.calls == [1]


def test_blocking_retry_until_it_works_or_its_time_is_up() -> None:
    calls: list[int] = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("database is locked")
        return "done"

    def is_locked(exc: BaseException) -> bool:
        return "locked" in str(exc)

    assert retry_blocking(locked_twice, is_locked, FAST, for_seconds=5) == "done"
    assert len(calls) == 3

    def always_locked() -> str:
        raise OSError("database is locked")

    with pytest.raises(OSError, match="locked"):
        retry_blocking(always_locked, is_locked, FAST, for_seconds=0.05)

    def broken() -> str:
        calls.append(1)
        raise OSError("disk I/O error")

    calls.clear()
    with pytest.raises(OSError, match="disk"):
        retry_blocking(broken, is_locked, FAST, for_seconds=5)
    assert len(calls) == 1
