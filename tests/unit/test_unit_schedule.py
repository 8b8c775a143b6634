"""services/child/schedule.py: the hops of a scheduled task's wait; shared/readmodel.py's
reading of a scheduled task whose time has come."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.child.schedule import STEPS_MS, hop_ms
from shared.readmodel import state_now


@pytest.mark.parametrize(
    ("remaining_s", "hop"),
    [(0.001, 250), (0.25, 250), (0.9, 250), (1, 1_000), (4.99, 1_000), (29, 5_000),
     (299, 30_000), (3599, 300_000), (3600, 3_600_000), (30 * 86_400, 3_600_000)],
)  # fmt: skip
def test_a_hop_is_the_longest_step_that_ends_before_the_time(remaining_s: float, hop: int) -> None:
    assert hop_ms(remaining_s) == hop


@pytest.mark.parametrize("remaining_s", [0.3, 1.7, 7.25, 61, 3601.5, 86_400 * 3 + 0.1])
def test_a_wait_never_ends_early_and_at_most_a_short_step_late(remaining_s: float) -> None:
    waited_ms, hops = 0, 0
    while remaining_s * 1000 - waited_ms > 0:
        waited_ms += hop_ms((remaining_s * 1000 - waited_ms) / 1000)
        hops += 1
    assert 0 <= waited_ms - remaining_s * 1000 < STEPS_MS[0]
    assert hops <= 24 + 3 * 12 + 12 + 6 + 5 + 4 + 4  # a day of hours is 24 hops, and so on


def test_a_scheduled_task_reads_pending_once_its_time_has_come() -> None:
    now = datetime.now(UTC)
    assert state_now("scheduled", now + timedelta(minutes=1)) == "scheduled"
    assert state_now("scheduled", now - timedelta(seconds=1)) == "pending"
    assert state_now("processing", now + timedelta(minutes=1)) == "processing"
    assert state_now("pending", None) == "pending"
