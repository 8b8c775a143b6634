"""The tracker's database down for a while: it holds its events unacked, then catches up."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api import send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once
from tests.support.servers import PrivatePostgres

pytestmark = pytest.mark.slow


def test_the_tracker_waits_out_a_database_outage(
    postgres_bus: Bus, private_postgres: PrivatePostgres
) -> None:
    bus = postgres_bus
    bus.start_all(RELAY_DB_RETRY="0.5")
    tracker_queue = bus.namespace.topo.tracker_queue
    before = [send_task(bus, "echo") for _ in range(10)]
    assert_exactly_once(bus.database_url, before)

    private_postgres.stop()
    during = [send_task(bus, "echo") for _ in range(30)]  # sends need no database
    # The children finish and call back; the tracker cannot commit, so it acks nothing.
    wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    tracker = next(p for p in bus.procs if p.name == "tracker")
    wait_for(lambda: "holding" in tracker.output(), what="the tracker to hold its batch")
    ready = httpx.get(f"{bus.api}/readyz", timeout=5).json()
    assert ready["database"] is False and ready["broker"] is True
    # Delivered to the tracker and held there unacked (within its prefetch).
    assert bus.namespace.queue_depth(tracker_queue) == 0

    private_postgres.start()
    assert_exactly_once(bus.database_url, before + during)
    wait_for(lambda: bus.namespace.queue_depth(tracker_queue) == 0)
    assert tracker.popen.poll() is None
