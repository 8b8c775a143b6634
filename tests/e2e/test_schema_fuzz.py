"""Hostile input generated from the API's own OpenAPI schema (schemathesis, bounded)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from shared.topology import Topology
from tests.support.bus import API_KEY, Bus, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

EXAMPLES_PER_OPERATION = 25


def test_no_input_from_the_schema_makes_a_5xx_or_a_stray_publish(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    schema = schemathesis.openapi.from_url(f"{bus.api}/openapi.json")
    accepted_tasks: set[str] = set()
    accepted_messages = 0
    operations = 0

    def check(case: Any) -> None:
        nonlocal accepted_messages
        if case.path.endswith("/send") and isinstance(case.body, dict):
            pool = case.body.get("to")
            if isinstance(pool, str) and Topology.is_pool_name(pool):
                bus.namespace.pools.add(pool)  # the API may declare it: delete it after
        response = case.call(headers={"X-Relay-API-Key": API_KEY}, timeout=10)
        where = (case.method, case.path, response.status_code, response.text[:300])
        assert response.status_code < 500, where
        body = response.json()
        if response.status_code >= 400:
            assert body["status"] == "error" and isinstance(body["msg"], str), where
            assert "detail" not in body, where
        elif case.path.endswith("/send"):
            if body["task_id"] is None:
                accepted_messages += 1
            else:
                accepted_tasks.add(body["task_id"])

    fuzz = settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        strategy = result.ok().as_strategy()

        @fuzz
        @given(case=strategy)
        def run(case: Any) -> None:
            check(case)

        run()
        operations += 1
    assert operations >= 9

    # Once the tracker has everything, the log holds only what was accepted.
    tracker = bus.namespace.topo.tracker_queue
    wait_for(lambda: bus.namespace.queue_depth(tracker) == 0, what="the tracker to drain")
    logs = httpx.get(
        f"{bus.api}/api/relay/logs", params={"limit": 1000}, headers={"X-Relay-API-Key": API_KEY}
    ).json()["logs"]
    sends = {e["task_id"] for e in logs if e["event"] == "send"}
    assert sends <= accepted_tasks
    assert sum(e["event"] == "message" for e in logs) <= accepted_messages
