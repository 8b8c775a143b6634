"""The tracker's batches: written early after a quiet moment, within a budget; else the window."""

from __future__ import annotations

import asyncio
from typing import cast

from aiormq.abc import DeliveredMessage

from services.tracker.batching import early_batches, early_rate
from services.tracker.consumer import Tracker
from shared.settings import TrackerSettings
from shared.token_bucket import TokenBucket


def test_the_budget_starts_full_spends_and_refills_at_its_rate() -> None:
    budget = TokenBucket(rate=10, burst=2)
    assert budget.wait(0.0) == 0
    assert budget.take(0.0) == budget.take(0.0) == 0
    assert budget.wait(0.0) > 0
    assert budget.wait(0.05) > 0  # half a token
    assert budget.wait(0.1) == 0
    assert budget.wait(100.0) == 0
    budget.take(100.0)
    budget.take(100.0)
    assert budget.wait(100.0) > 0  # never more than the burst saved


def test_the_early_budget_is_a_window_a_second_with_a_burst() -> None:
    budget = early_batches(0.02)
    assert (budget.rate, budget.burst) == (50, 5)
    assert all(budget.take(0.0) == 0 for _ in range(5))
    assert budget.take(0.0) > 0


def _tracker(**settings: float) -> Tracker:
    return Tracker(TrackerSettings(**settings))


def _put_later(tracker: Tracker, delay: float, n: int) -> None:
    message = cast(DeliveredMessage, n)
    asyncio.get_running_loop().call_later(delay, tracker._inbox.put_nowait, message)


async def test_a_lone_event_is_written_after_the_idle_gap_not_the_window() -> None:
    tracker = _tracker(batch_wait=9, batch_idle=0.01)
    _put_later(tracker, 0, 1)
    async with asyncio.timeout(5):  # far below batch_wait
        assert await tracker._next_batch() == [1]


async def test_events_closer_than_the_idle_gap_share_a_batch() -> None:
    tracker = _tracker(batch_wait=9, batch_idle=0.3)
    for delay, n in ((0, 1), (0.05, 2), (0.1, 3)):
        _put_later(tracker, delay, n)
    async with asyncio.timeout(5):
        assert await tracker._next_batch() == [1, 2, 3]


async def test_out_of_budget_a_batch_waits_for_its_window() -> None:
    tracker = _tracker(batch_wait=0.5, batch_idle=0.01)
    tracker._early = TokenBucket(rate=0, burst=0)
    _put_later(tracker, 0, 1)
    _put_later(tracker, 0.1, 2)  # long after the idle gap, within the window
    assert await tracker._next_batch() == [1, 2]


async def test_no_idle_gap_means_the_window_alone() -> None:
    tracker = _tracker(batch_wait=0.5, batch_idle=0)
    _put_later(tracker, 0, 1)
    _put_later(tracker, 0.1, 2)
    assert await tracker._next_batch() == [1, 2]


def test_early_batches_come_at_most_once_per_window() -> None:
    assert early_rate(0.02) == 50
    assert early_rate(0) == 0
