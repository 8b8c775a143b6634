"""A child cut off from the broker when a cancel is sent does not start the canceled task once
it is back, even when the task reaches it before the cancel does."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from tests.faults.test_broker import _local_broker
from tests.faults.test_redelivery import close_connection_named
from tests.support.api import AUTH, finished, send_task
from tests.support.bus import Bus, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

#: Cancels of other tasks ahead of ours in the control stream: a reconnected child takes a
#: while to read them, while the pool hands it the task at once.
FILLER = 40_000


def _fill_control_stream(bus: Bus) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(bus.namespace.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        stream = bus.namespace.topo.control_stream
        for n in range(FILLER):
            body = {"event_id": f"e_filler{n}", "event": "cancel", "ts": "2026-01-01T00:00:00Z",
                    "task_id": f"t_filler{n}", "canceled_by": "test"}  # fmt: skip
            channel.basic_publish("", stream, json.dumps(body).encode(),
                                  pika.BasicProperties(type="event"))  # fmt: skip
    finally:
        connection.close()


def test_a_task_canceled_while_its_child_was_away_never_starts(bus: Bus, tmp_path: Path) -> None:
    if not _local_broker(bus):
        pytest.skip("needs rabbitmqctl on the tests' broker")
    import httpx

    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="away")
    bus.start_api()
    _fill_control_stream(bus)
    warm = send_task(bus, "echo")
    wait_for(lambda: finished(bus, warm), timeout=60, what="the child to read the stream")
    runs = tmp_path / "runs"
    assert close_connection_named("convbus-child-child-away")  # the child is cut off
    task_id = send_task(bus, "counted_nap", payload={"counter": str(runs), "seconds": 0})
    canceled = httpx.post(f"{bus.api}/api/relay/tasks/{task_id}/cancel", headers=AUTH, timeout=10)
    assert canceled.status_code == 200
    # Back, the child gets the task from its pool at once and the cancel only after the filler.
    wait_for(lambda: finished(bus, task_id), timeout=60)
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after), timeout=60, what="the child to serve again")
    assert not runs.exists()
    assert finished(bus, task_id)["task_status"] == "canceled"  # type: ignore[index]
