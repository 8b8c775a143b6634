"""A task that kills every worker that takes it is parked by RabbitMQ's delivery limit."""

from __future__ import annotations

import pytest

from shared.topology import DELIVERY_LIMIT
from tests.support.api import finished, send_task
from tests.support.bus import Bus, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def test_a_task_that_crashes_its_workers_ends_in_the_parking_lot(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    task_id = send_task(bus, "crash")
    parked = bus.namespace.topo.parked_queue(bus.namespace.topo.pool_queue("child"))
    crashes = 0
    # Each worker takes the task and dies; RabbitMQ counts the deliveries and, past its
    # limit, dead-letters the task. The loop is bounded by the limit (and a margin).
    while bus.namespace.queue_depth(parked) == 0 and crashes < DELIVERY_LIMIT + 5:
        child = bus.start_child("child", "--handlers", "bus_handlers:handlers")
        wait_for(
            lambda c=child: c.popen.poll() is not None or bus.namespace.queue_depth(parked) > 0,
            timeout=60,
            what="the worker to crash, or the task to be parked",
        )
        if child.popen.poll() == 3:
            crashes += 1
    assert bus.namespace.queue_depth(parked) == 1
    assert DELIVERY_LIMIT <= crashes <= DELIVERY_LIMIT + 1
    failed = wait_for(lambda: finished(bus, task_id), what="the tracker to mark it failed")
    assert failed["task_status"] == "failed" and "delivered too many times" in failed["error"]

    survivor = bus.procs[-1] if bus.procs[-1].popen.poll() is None else None
    survivor = survivor or bus.start_child("child", "--handlers", "bus_handlers:handlers")
    other = send_task(bus, "echo")
    assert wait_for(lambda: finished(bus, other))["task_status"] == "completed"
    assert survivor.popen.poll() is None
