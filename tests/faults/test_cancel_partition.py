"""A child cut off from the broker when a cancel is sent does not start the canceled task once
it is back, though the pool hands it the task at once and the live cancel never reaches it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.faults.test_broker import _local_broker
from tests.faults.test_redelivery import close_connection_named
from tests.support.api import AUTH, finished, send_task
from tests.support.bus import Bus, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_a_task_canceled_while_its_child_was_away_never_starts(bus: Bus, tmp_path: Path) -> None:
    if not _local_broker(bus):
        pytest.skip("needs rabbitmqctl on the tests' broker")
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="away")
    bus.start_api()
    warm = send_task(bus, "echo")
    wait_for(lambda: finished(bus, warm), timeout=60, what="the child to serve")
    runs = tmp_path / "runs"
    # The broker drops the child's connection: its queue of cancels goes with it, and it
    # reconnects (aio-pika's robust connection, after 5 s) while the cancel is long sent.
    assert close_connection_named("convbus-child-child-away")
    task_id = send_task(bus, "counted_nap", payload={"counter": str(runs), "seconds": 0})
    canceled = httpx.post(f"{bus.api}/api/relay/tasks/{task_id}/cancel", headers=AUTH, timeout=10)
    assert canceled.status_code == 200
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after), timeout=60, what="the child to serve again")
    assert not runs.exists()
    assert finished(bus, task_id)["task_status"] == "canceled"  # type: ignore[index]
