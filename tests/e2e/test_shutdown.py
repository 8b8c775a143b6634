"""SIGTERM: a child finishes its in-flight tasks, or leaves them for redelivery; nothing is lost."""

from __future__ import annotations

import pytest

from tests.support.api import finished, logs, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once, ledger

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def processing_seen(bus: Bus, task_id: str) -> bool:
    return any(e["event"] == "processing" for e in logs(bus, task_id=task_id))


def test_a_stopping_child_finishes_its_in_flight_task(bus: Bus) -> None:
    bus.start_tracker()
    child = bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api()
    task_id = send_task(bus, "nap", payload={"seconds": 1.5})
    wait_for(lambda: processing_seen(bus, task_id), what="the child to start the task")
    assert child.stop(timeout=30) == 0
    assert wait_for(lambda: finished(bus, task_id))["task_status"] == "completed"
    assert "stopped after 1 tasks" in child.output()


def test_a_child_out_of_grace_leaves_the_task_for_another(bus: Bus) -> None:
    bus.start_tracker()
    first = bus.start_child(
        "child",
        "--handlers",
        "bus_handlers:handlers",
        RELAY_SHUTDOWN_GRACE="0",
        RELAY_CHILD_ID="first",
    )
    bus.start_api()
    task_id = send_task(bus, "nap", payload={"seconds": 3})
    wait_for(lambda: processing_seen(bus, task_id), what="the first child to start the task")
    assert first.stop(timeout=30) == 0
    bus.start_child("child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="second")
    done = wait_for(lambda: finished(bus, task_id), timeout=30)
    assert done["task_status"] == "completed" and done["child_id"] == "second"
    assert done["attempts"] == 1  # a redelivery is the same attempt (the retry count is #3's)


def test_a_tracker_stopped_mid_stream_exits_cleanly_and_loses_nothing(bus: Bus) -> None:
    from concurrent.futures import ThreadPoolExecutor

    tracker = bus.start_tracker(RELAY_BATCH_SIZE="20")
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api()
    with ThreadPoolExecutor(8) as pool:
        sending = pool.map(lambda _: send_task(bus, "echo"), range(400))
        wait_for(lambda: len(ledger(bus.database_url)[0]) >= 20, what="the tracker to write")
        assert tracker.stop(timeout=30) == 0  # while sends and callbacks still stream in
        task_ids = list(sending)
    assert "tracker stopped after" in tracker.output()
    bus.start_tracker()
    assert_exactly_once(bus.database_url, task_ids)
