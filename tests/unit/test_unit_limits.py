"""Token buckets: bursts, refill, Retry-After, and bounded memory."""

from __future__ import annotations

from services.api.limits import Limiter


def test_a_burst_then_one_request_per_token() -> None:
    limiter = Limiter(rate=2, burst=3)
    assert [limiter.take_now("k", now=0.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take_now("k", now=0.0) == 1  # wait half a second: Retry-After rounds up
    assert limiter.take_now("k", now=0.5) == 0
    assert limiter.take_now("k", now=0.5) == 1


def test_names_have_their_own_buckets() -> None:
    limiter = Limiter(rate=1, burst=1)
    assert limiter.take_now("a", now=0.0) == 0
    assert limiter.take_now("b", now=0.0) == 0
    assert limiter.take_now("a", now=0.0) == 1


def test_blocked_looks_without_taking() -> None:
    limiter = Limiter(rate=1, burst=1)
    assert limiter.blocked_now("a", now=0.0) == 0
    limiter.take_now("a", now=0.0)
    assert limiter.blocked_now("a", now=0.0) == 1
    assert limiter.blocked_now("a", now=1.0) == 0
    assert limiter.take_now("a", now=1.0) == 0  # the token blocked() saw is still there


def test_a_zero_rate_means_no_limit() -> None:
    limiter = Limiter(rate=0, burst=0)
    assert all(limiter.take_now("k", now=0.0) == 0 for _ in range(1000))


def test_memory_stays_bounded() -> None:
    limiter = Limiter(rate=1, burst=5, max_names=100)
    for i in range(1000):
        limiter.take_now(f"client-{i}", now=float(i))
    assert len(limiter._buckets) <= 100
