"""Two trackers on one queue and one PostgreSQL: the queue handed from one to the other under
load, again and again (the active one SIGKILLed; or paused past its heartbeat, so that the
broker hands its queue over while its batch is still in hand, and then resumed)."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.support.bus import Bus, Proc, wait_for
from tests.support.ledger import assert_exactly_once, ledger
from tests.support.load import Load
from tests.support.ops import metric

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

#: Handovers of each kind.
ROUNDS = 3


def written(tracker: Proc) -> float:
    """The entries this tracker has written (0 while it cannot answer)."""
    try:
        return metric(tracker, "convbus_tracker_events_total") or 0.0
    except httpx.HTTPError:
        return 0.0


def active(trackers: list[Proc]) -> Proc:
    """The tracker the queue is with: of the two, the one whose count of entries goes up under
    the load (both did, as a handover was under way: look again)."""
    baseline = [written(t) for t in trackers]

    def one_growing() -> Proc | None:
        nonlocal baseline
        now = [written(t) for t in trackers]
        grown = [t for t, b, n in zip(trackers, baseline, now, strict=True) if n > b]
        if len(grown) > 1:
            baseline = now
        return grown[0] if len(grown) == 1 else None

    found: Proc = wait_for(one_growing, timeout=60, interval=0.1, what="a tracker writing")
    return found


def test_two_trackers_hand_the_queue_over_and_every_task_is_recorded_once(bus: Bus) -> None:
    env = {"RELAY_HEARTBEAT": "2", "RELAY_BATCH_WAIT": "0.05"}
    trackers = [bus.start_tracker(**env), bus.start_tracker(**env)]
    bus.start_child("child")
    bus.start_api()
    handovers = 0
    with Load(bus, pause=0.01) as load:  # about 60 tasks a second
        for round_ in range(ROUNDS * 2):
            holder = active(trackers)
            other = trackers[1 - trackers.index(holder)]
            if round_ % 2 == 0:
                holder.kill()  # SIGKILL mid-stream: its unacked batch goes to the other
                trackers[trackers.index(holder)] = bus.start_tracker(**env)
            else:
                # Paused: RabbitMQ closes its connection after two missed heartbeats and hands
                # the queue over; resumed, it still holds its batch and writes it.
                os.kill(holder.popen.pid, signal.SIGSTOP)
                try:
                    taker, start = other, written(other)
                    wait_for(
                        lambda t=taker, s=start: written(t) > s, timeout=60, what="the handover"
                    )
                finally:
                    os.kill(holder.popen.pid, signal.SIGCONT)
            handovers += 1
    assert handovers == ROUNDS * 2 and len(load.accepted) > 100
    assert_exactly_once(bus.database_url, load.accepted, timeout=120)
    _, counts = ledger(bus.database_url)
    assert all(counts.get((t, "processing"), 0) <= 1 for t in load.accepted)
    assert all(t.popen.poll() is None for t in trackers)  # the paused ones carried on
