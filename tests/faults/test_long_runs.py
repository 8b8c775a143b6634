"""A handler that runs far longer than RabbitMQ's consumer timeout completes once: its delivery
is handed to a lease before the broker would take it back, and a lease whose child dies is
taken over by the tracker, which sends the task again.

The private node times out a delivery left unacked for 2 s and looks every second (the
defaults are 30 min and 60 s); the handlers run four to five times that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import finished, logs, record, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once

SHORT_CONSUMER_TIMEOUT = {
    "config": "consumer_timeout = 2000\n",
    "advanced": "{channel_tick_interval, 1000}",
}
#: The child hands a run to a lease after 0.5 s; a lease lasts 2 s without a heartbeat.
LEASED = {"RELAY_HOLD_DELIVERY": "0.5", "RELAY_LEASE": "2", "RELAY_LEASE_SWEEP_EVERY": "0.5"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("private_rabbit", [SHORT_CONSUMER_TIMEOUT], indirect=True),
]


def _start(bus: Bus, children: list[str], **env: str) -> None:
    bus.start_tracker(**{**LEASED, **env})
    for name in children:
        bus.start_child(
            "child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID=name, **{**LEASED, **env}
        )
    bus.start_api()


def test_a_run_past_the_consumer_timeout_completes_once(rabbit_bus: Bus, tmp_path: Path) -> None:
    # Two children: a delivery the broker took back would go to the other one and run again
    # (with RELAY_HOLD_DELIVERY above the run's length, it does: 2-3 runs).
    _start(rabbit_bus, ["one", "two"])
    counter = tmp_path / "runs"
    task_id = send_task(rabbit_bus, "counted_nap", payload={"counter": str(counter), "seconds": 9})
    assert_exactly_once(rabbit_bus.database_url, [task_id])
    assert counter.read_text() == "1"
    row = record(rabbit_bus, task_id)
    assert (row["task_status"], row["attempts"], row["lease_until"]) == ("completed", 1, None)
    events = [entry["event"] for entry in logs(rabbit_bus, task_id=task_id)]
    assert "lease" in events and "lease_expired" not in events
    assert events.count("progress") >= 3, events  # heartbeats, one a half second


def test_a_leased_run_whose_child_dies_is_run_again_and_completes_once(
    rabbit_bus: Bus, tmp_path: Path
) -> None:
    rabbit_bus.start_tracker(**LEASED)
    doomed = rabbit_bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="doomed", **LEASED
    )
    rabbit_bus.start_api()
    counter = tmp_path / "runs"
    task_id = send_task(rabbit_bus, "counted_nap", payload={"counter": str(counter), "seconds": 6})
    wait_for(lambda: record(rabbit_bus, task_id)["lease_until"], what="the run's lease")
    doomed.kill()  # SIGKILL: no heartbeat, no callback, its delivery long acked
    rabbit_bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", RELAY_CHILD_ID="heir", **LEASED
    )
    row = wait_for(lambda: finished(rabbit_bus, task_id), timeout=60, what="the task to finish")
    assert (row["task_status"], row["child_id"], row["attempts"]) == ("completed", "heir", 2)
    assert counter.read_text() == "2"  # the dead child's run, and the heir's
    assert_exactly_once(rabbit_bus.database_url, [task_id])
    expired = [e for e in logs(rabbit_bus, task_id=task_id) if e["event"] == "lease_expired"]
    assert len(expired) == 1 and "child doomed silent" in expired[0]["error"], expired
