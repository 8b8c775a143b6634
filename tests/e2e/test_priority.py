"""Priority: a `high` task on a busy pool starts at once, in its own queue and handler slots;
normal tasks keep their order; a high task's retry stays high."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from tests.support.api import finished, logs, record, send_task
from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

BACKLOG = 10_000


def _queue_a_backlog(bus: Bus, seconds: float) -> None:
    """BACKLOG normal tasks straight into the pool's queue (the API would take a while)."""
    connection = pika.BlockingConnection(pika.URLParameters(bus.namespace.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = bus.namespace.topo.pool_queue("child")
        for n in range(BACKLOG):
            body = {"task_id": f"backlog{n}", "from": "master", "to": "child", "type": "task",
                    "cmd": "nap", "payload": {"seconds": seconds},
                    "created_at": "2026-12-01T00:00:00Z"}  # fmt: skip
            channel.basic_publish("", queue, json.dumps(body).encode(),
                                  pika.BasicProperties(delivery_mode=2))  # fmt: skip
    finally:
        connection.close()


def test_a_high_task_on_a_saturated_pool_starts_at_once(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", RELAY_CONCURRENCY="2",
        RELAY_SHUTDOWN_GRACE="0.5",  # its two naps are not waited for at the end
    )  # fmt: skip
    bus.start_api()
    _queue_a_backlog(bus, seconds=120)  # two run for two minutes, the rest wait behind them
    topo = bus.namespace.topo
    wait_for(lambda: bus.namespace.queue_depth(topo.pool_queue("child")) == BACKLOG - 2)
    urgent = send_task(bus, "echo", priority="high", payload={"urgent": True})
    row = wait_for(lambda: finished(bus, urgent), timeout=30, what="the high task")
    assert (row["task_status"], row["priority"]) == ("completed", "high")
    assert bus.namespace.queue_depth(topo.pool_queue("child")) == BACKLOG - 2  # none moved


def test_normal_tasks_keep_their_order_and_a_high_retry_stays_high(
    bus: Bus, tmp_path: Path
) -> None:
    bus.start_tracker()
    bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", RELAY_CONCURRENCY="1",
        RELAY_HIGH_CONCURRENCY="1", RELAY_RETRY='{"default": {"max_retries": 2, "backoff": 0.2}}',
    )  # fmt: skip
    bus.start_api()
    normal = [send_task(bus, "nap", payload={"seconds": 0.4}) for _ in range(5)]
    urgent = send_task(
        bus, "flaky", priority="high", payload={"counter": str(tmp_path / "n"), "fail_times": 1}
    )
    row = wait_for(lambda: finished(bus, urgent), timeout=30, what="the high task")
    assert (row["task_status"], row["attempts"]) == ("completed", 2)
    # Its retry came back through the high queue: done while normal ones still wait.
    assert record(bus, normal[-1])["task_status"] != "completed"
    done = [wait_for(lambda t=t: finished(bus, t), timeout=30) for t in normal]
    ends = [str(d["completed_at"]) for d in done]
    assert ends == sorted(ends)  # one at a time, in the order sent
    assert [e["event"] for e in logs(bus, task_id=urgent)].count("retry") == 1
