"""Faults of the bus's own processes: children and the tracker killed or stopped mid-work."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from tests.support.api import AUTH, logs, send, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once, ledger

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HANDLERS = ("--handlers", "bus_handlers:handlers")


def test_a_child_killed_mid_handler_loses_nothing(bus: Bus) -> None:
    bus.start_tracker()
    victim = bus.start_child("child", *HANDLERS, RELAY_PREFETCH="8", RELAY_CHILD_ID="victim")
    bus.start_api()
    ids = [send_task(bus, "nap", payload={"seconds": 0.5}) for _ in range(30)]
    wait_for(lambda: logs(bus, event="processing"), what="the victim to start tasks")
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)
    bus.start_child("child", *HANDLERS, RELAY_PREFETCH="8", RELAY_CHILD_ID="heir")
    assert_exactly_once(bus.database_url, ids)


def test_the_tracker_stopped_for_a_while_catches_up(bus: Bus) -> None:
    tracker = bus.start_tracker()
    bus.start_child("child", *HANDLERS)
    bus.start_api()
    before = [send_task(bus, "echo") for _ in range(10)]
    assert_exactly_once(bus.database_url, before)
    assert tracker.stop() == 0
    during = [send_task(bus, "echo") for _ in range(40)]
    # Callbacks are accepted while nothing records them (ids are verified by signature).
    wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    bus.start_tracker()
    assert_exactly_once(bus.database_url, before + during)


def test_repeated_sends_and_callbacks_count_once(bus: Bus) -> None:
    bus.start_all()
    ids = []
    for i in range(10):
        body = {
            "from": "master",
            "to": "child",
            "type": "task",
            "cmd": "echo",
            "task_id": f"job-{i}",
        }
        first = send(bus, **{k: v for k, v in body.items() if k != "from"})
        again = send(bus, **{k: v for k, v in body.items() if k != "from"})
        assert first.json()["task_id"] == again.json()["task_id"] == f"job-{i}"
        keyed = httpx.post(
            f"{bus.api}/api/relay/send",
            json={**body, "task_id": None, "payload": {"i": i}},
            headers={**AUTH, "Idempotency-Key": f"key-{i}"},
            timeout=10,
        )
        keyed_again = httpx.post(
            f"{bus.api}/api/relay/send",
            json={**body, "task_id": None, "payload": {"i": i}},
            headers={**AUTH, "Idempotency-Key": f"key-{i}"},
            timeout=10,
        )
        assert keyed.json()["task_id"] == keyed_again.json()["task_id"]
        ids += [f"job-{i}", keyed.json()["task_id"]]
    assert_exactly_once(bus.database_url, ids)
    for task_id in ids[:4]:
        callback = {"task_id": task_id, "status": "done", "result": "late"}
        answer = httpx.post(f"{bus.api}/api/relay/callback", json=callback, headers=AUTH)
        assert answer.json() == {"status": "ok", "duplicate": True}
    assert_exactly_once(bus.database_url, ids)
    states, _ = ledger(bus.database_url)
    assert len([t for t in states if t.startswith("job-")]) == 10


def test_poison_in_a_pool_is_parked_and_the_rest_flows(bus: Bus) -> None:
    bus.start_all()
    pool_queue = bus.namespace.topo.pool_queue("child")
    ids = []
    for i in range(20):
        ids.append(send_task(bus, "echo", payload={"i": i}))
        if i % 5 == 0:
            bus.namespace.publish_raw(pool_queue, b"{not json" + str(i).encode())
            bus.namespace.publish_raw(pool_queue, json.dumps({"task_id": f"x{i}"}).encode())
    assert_exactly_once(bus.database_url, ids)
    parked = bus.namespace.topo.parked_queue(pool_queue)
    wait_for(lambda: bus.namespace.queue_depth(parked) == 8)
    wait_for(lambda: len(logs(bus, event="dead")) == 8, what="the tracker to log every parking")
