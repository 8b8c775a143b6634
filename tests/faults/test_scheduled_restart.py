"""Scheduled tasks wait in RabbitMQ, not in a process: a broker crash and a child killed while
they wait lose none, and each runs once, not before its time.

The crash comes within a second of the first task's send. RabbitMQ 3.10 loses what a quorum
queue declared a moment before a crash holds: this fails when the child declares its delay
queues on a task's first hop rather than at its start."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.api import logs, record, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once
from tests.support.servers import PrivateRabbit

pytestmark = pytest.mark.slow


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ready(bus: Bus) -> bool:
    try:
        return httpx.get(f"{bus.api}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_scheduled_tasks_survive_a_broker_crash_and_a_killed_child(
    rabbit_bus: Bus, private_rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    bus = rabbit_bus
    env = {"RELAY_HEARTBEAT": "2", "RELAY_PUBLISH_TIMEOUT": "3"}
    bus.start_tracker(**env)
    child = bus.start_child("child", "--handlers", "bus_handlers:handlers", **env)
    bus.start_api(**env)
    counters = {}
    for n, delay_s in enumerate([3, 4, 5, 6, 8, 10, 12, 3, 4, 5]):
        counter = tmp_path / f"runs-{n}"
        priority = {"priority": "high"} if n % 3 == 0 else {}
        task_id = send_task(
            bus, "counted_nap", delay_s=delay_s, payload={"counter": str(counter), "seconds": 0},
            **priority,
        )  # fmt: skip
        counters[task_id] = counter
    wait_for(lambda: all(record(bus, t)["task_status"] == "scheduled" for t in counters))

    # While they wait: the broker crashes, and the child is killed.
    private_rabbit.kill()
    child.kill()
    private_rabbit.start()
    # A child again once the API publishes again (a child earlier would call back in vain, and
    # its retries could run out).
    wait_for(lambda: _ready(bus), timeout=60, what="the API to publish again")
    bus.start_child("child", "--handlers", "bus_handlers:handlers", **env)

    ids = list(counters)
    assert_exactly_once(bus.database_url, ids, timeout=120)
    for task_id, counter in counters.items():
        assert counter.read_text() == "1", task_id  # each ran once
        row = record(bus, task_id)
        assert row["task_status"] == "completed", row
        started = [_at(e["ts"]) for e in logs(bus, task_id=task_id) if e["event"] == "processing"]
        assert len(started) == 1 and started[0] >= _at(row["not_before"]), (started, row)
    assert all(p.popen.poll() is None for p in bus.procs if p is not child)
