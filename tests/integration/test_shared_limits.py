"""Limits counted in Redis: API replicas share them; Redis gone lets requests through."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from services.api.limits import SharedLimiter, SharedStore
from shared import metrics


@pytest.fixture
async def limits_namespace(redis_url: str) -> AsyncIterator[str]:
    """A namespace of the test's own; its keys in Redis are deleted after."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*convbus:{name}:*"):
        client.delete(key)


async def test_replicas_share_one_count(redis_url: str, limits_namespace: str) -> None:
    """Two replicas together allow the burst once; a key, a kind, a namespace count apart."""
    stores = [SharedStore(redis_url, limits_namespace) for _ in range(2)]
    replicas = [SharedLimiter(store, "sends", rate=0.1, burst=4) for store in stores]
    try:
        waits = [await replicas[n % 2].take("master") for n in range(6)]
        assert waits == [0, 0, 0, 0, 10, 10]  # Retry-After: one use frees in 1/rate seconds
        assert await replicas[1].blocked("master") == 10  # looking counts nothing
        assert await replicas[0].take("other-key") == 0
        assert await SharedLimiter(stores[0], "progress", rate=0.1, burst=4).take("master") == 0
        elsewhere = SharedStore(redis_url, f"{limits_namespace}-b")
        try:
            assert await SharedLimiter(elsewhere, "sends", rate=0.1, burst=4).take("master") == 0
        finally:
            await elsewhere.close()
    finally:
        for store in stores:
            await store.close()


async def test_a_rate_of_zero_is_no_limit(redis_url: str, limits_namespace: str) -> None:
    store = SharedStore(redis_url, limits_namespace)
    try:
        unlimited = SharedLimiter(store, "sends", rate=0, burst=1)
        assert [await unlimited.take("k") for _ in range(5)] == [0] * 5
    finally:
        await store.close()


async def test_redis_gone_lets_requests_through_and_counts_them() -> None:
    """A limit guards, it does not gate: with Redis unreachable sends go on (and the metric and
    the log say the limits went unchecked)."""
    store = SharedStore("redis://127.0.0.1:1/0", "nowhere")  # nothing listens on port 1
    before = metrics.API_LIMITS_UNAVAILABLE._value.get()
    try:
        limiter = SharedLimiter(store, "sends", rate=0.1, burst=1)
        assert [await limiter.take("k") for _ in range(3)] == [0, 0, 0]
        assert await limiter.blocked("k") == 0
    finally:
        await store.close()
    assert metrics.API_LIMITS_UNAVAILABLE._value.get() == before + 4
