"""A delivery that comes back while its handler still runs in the same child (its channel was
closed and reopened) does not start the handler a second time."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.faults.test_broker import _local_broker
from tests.support.api import record, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def close_connection_named(name: str) -> bool:
    """Have the broker close the connection whose client calls itself `name`."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    pids = [line.split("\t")[0] for line in listed.splitlines() if f'"{name}"' in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "test"], timeout=30, check=True)
    return bool(pids)


def test_a_task_delivered_again_while_it_runs_here_is_not_run_twice(
    bus: Bus, tmp_path: Path
) -> None:
    if not _local_broker(bus):
        pytest.skip("needs rabbitmqctl on the tests' broker")
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="solo")
    bus.start_api()
    counter = tmp_path / "runs"
    task_id = send_task(bus, "counted_nap", payload={"counter": str(counter), "seconds": 6})
    wait_for(counter.exists, what="the handler to start")
    # The broker closes the child's connection mid-run: the delivery goes back to the queue
    # and comes back to the same child, reconnected, while the handler still runs.
    assert close_connection_named("convbus-child-child-solo")
    assert_exactly_once(bus.database_url, [task_id])
    assert counter.read_text() == "1"
    assert record(bus, task_id)["result"] == {"runs_before": 0}
