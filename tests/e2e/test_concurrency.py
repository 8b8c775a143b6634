"""Waiting work at scale: one child runs many handlers at once, sync or async, with its defaults;
RELAY_CONCURRENCY caps them; a stopping child starts no more and does not wait on a thread."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.api import logs, record, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import all_final, assert_exactly_once, ledger

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HANDLERS = ("--handlers", "bus_handlers:handlers")


def send_many(bus: Bus, n: int, cmd: str, **payload: object) -> list[str]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: send_task(bus, cmd, payload=dict(payload)), range(n)))


def processing_on(bus: Bus, task_id: str) -> list[str]:
    return [e["child_id"] for e in logs(bus, task_id=task_id) if e["event"] == "processing"]


@pytest.mark.parametrize("cmd", ["together", "together_sync"], ids=["async", "sync"])
def test_a_child_with_its_defaults_runs_hundreds_of_waiting_handlers_at_once(
    bus: Bus, cmd: str
) -> None:
    # Each handler finishes only once all 300 run at the same time in this one child: at the
    # old default (prefetch 32), or with sync handlers on asyncio's default executor (six
    # threads here), they give up after 30 s and the tasks fail.
    bus.start_tracker()
    bus.start_child("child", *HANDLERS)
    bus.start_api()
    task_ids = send_many(bus, 300, cmd, group=uuid.uuid4().hex, parties=300, within=30)
    wait_for(lambda: all_final(bus.database_url, task_ids), timeout=60, what="every task")
    states, _ = ledger(bus.database_url)
    assert {states[t] for t in task_ids} == {"completed"}


def test_the_concurrency_caps_the_handlers_and_the_rest_wait_in_the_child(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child("child", *HANDLERS, RELAY_CONCURRENCY="4", RELAY_PREFETCH="12")
    bus.start_api()
    pool_queue = bus.namespace.topo.pool_queue("child")
    task_ids = send_many(bus, 12, "count_running", seconds=1.5)
    # All twelve are delivered to the child (the prefetch) while only four can run.
    wait_for(lambda: bus.namespace.queue_depth(pool_queue) == 0, what="all delivered")
    states, _ = ledger(bus.database_url)
    assert sum(states.get(t) == "completed" for t in task_ids) < 12
    wait_for(lambda: all_final(bus.database_url, task_ids), what="every task")
    peaks = [record(bus, t)["result"]["peak"] for t in task_ids]
    assert max(peaks) == 4


def test_a_stopping_child_returns_the_deliveries_waiting_for_a_handler_at_once(
    bus: Bus,
) -> None:
    bus.start_tracker()
    first = bus.start_child(
        "child", *HANDLERS, RELAY_CONCURRENCY="2", RELAY_PREFETCH="10", RELAY_CHILD_ID="first"
    )
    bus.start_api()
    task_ids = send_many(bus, 10, "nap", seconds=8)
    wait_for(
        lambda: sum(bool(processing_on(bus, t)) for t in task_ids) == 2,
        what="the first child to start two tasks",
    )
    first.terminate()
    bus.start_child("child", *HANDLERS, RELAY_CHILD_ID="second")
    # The eight waiting ones run on the second child while the first still finishes its two
    # (8 s naps, within its 30 s grace): they were not held until its handlers ended.
    wait_for(
        lambda: sum(bool(processing_on(bus, t)) for t in task_ids) == 10,
        timeout=6,
        what="the second child to start the other eight",
    )
    assert first.running
    assert first.popen.wait(timeout=30) == 0
    assert "stopped after 2 tasks" in first.output()
    assert_exactly_once(bus.database_url, task_ids)
    ran_on = [record(bus, t)["child_id"] for t in task_ids]
    assert sorted(ran_on) == ["first"] * 2 + ["second"] * 8
    for task_id in task_ids:  # none of the eight was started by the first child
        assert len(processing_on(bus, task_id)) == 1


def test_a_sync_handler_past_the_grace_does_not_keep_its_child_alive(bus: Bus) -> None:
    bus.start_tracker()
    first = bus.start_child("child", *HANDLERS, RELAY_SHUTDOWN_GRACE="1", RELAY_CHILD_ID="first")
    bus.start_api()
    task_id = send_task(bus, "block_on", payload={"child": "first", "seconds": 120})
    wait_for(lambda: processing_on(bus, task_id), what="the first child to start the task")
    # Its thread stays blocked for two minutes; the child leaves it at the end of the grace.
    assert first.stop(timeout=15) == 0
    bus.start_child("child", *HANDLERS, RELAY_CHILD_ID="second")
    assert_exactly_once(bus.database_url, [task_id])
    assert record(bus, task_id)["result"] == {"ran_on": "second"}
