"""Replicas of every service at once; API replicas share their limits (RELAY_LIMITS_URL)."""

from __future__ import annotations

import httpx
import pytest

from cli.processes import free_port
from tests.support.bus import API_KEY, Bus, http_ready, wait_for
from tests.support.ledger import assert_exactly_once


def second_api(bus: Bus, **env: str) -> str:
    """Another API process on the bus, on a port of its own; its base URL."""
    port = free_port()
    proc = bus.start("api", "api", "--port", str(port), **env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ready(base, proc), timeout=30, what="the second API to serve")
    return base


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_two_replicas_share_the_send_and_failed_authentication_limits(
    bus: Bus, redis_url: str
) -> None:
    """Sends alternate between the replicas: together they allow one burst, not two; so do
    wrong keys. Without the shared store each replica would allow its own (8 sends, 6 keys)."""
    limits = {
        "RELAY_LIMITS_URL": redis_url,
        "RELAY_SEND_RATE": "0.01",
        "RELAY_SEND_BURST": "4",
        "RELAY_AUTH_FAILURE_RATE": "0.01",
        "RELAY_AUTH_FAILURE_BURST": "3",
    }
    bus.start_api(**limits)
    apis = [bus.api, second_api(bus, **limits)]
    body = {"from": "master", "to": "child", "type": "task", "cmd": "echo"}

    def send(n: int, key: str = API_KEY) -> int:
        url = f"{apis[n % 2]}/api/relay/send"
        headers = {"X-Relay-API-Key": key}
        return httpx.post(url, json=body, headers=headers, timeout=10).status_code

    assert [send(n) for n in range(8)] == [200] * 4 + [429] * 4
    assert [send(n, "wrong") for n in range(6)] == [401] * 3 + [429] * 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_every_service_in_replicas_runs_each_task_once(bus: Bus) -> None:
    """Two APIs (one id secret: the key's), four children of one pool on two "hosts" (a state
    directory each), two trackers: tasks sent through both APIs in turn, read back through the
    other, each run and recorded once."""
    bus.start_tracker()
    bus.start_tracker()
    for host in ("host-a", "host-a", "host-b", "host-b"):
        bus.start_child(
            "child", "--handlers", "bus_handlers:handlers",
            RELAY_STATE_DIR=str(bus.workdir / host), RELAY_CHILD_ID=f"{host}-{len(bus.procs)}",
        )  # fmt: skip
    bus.start_api()
    apis = [bus.api, second_api(bus)]
    headers = {"X-Relay-API-Key": API_KEY}
    body = {"from": "master", "to": "child", "type": "task", "cmd": "nap",
            "payload": {"seconds": 0.05}}  # fmt: skip
    ids = []
    for n in range(60):
        answer = httpx.post(f"{apis[n % 2]}/api/relay/send", json=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["task_id"])
    assert_exactly_once(bus.database_url, ids)
    ran_on = set()
    for n, task_id in enumerate(ids):  # a task id signed by one API reads at the other
        url = f"{apis[(n + 1) % 2]}/api/relay/tasks/{task_id}"
        task = httpx.get(url, headers=headers, timeout=5).json()
        assert task["task_status"] == "completed", task
        ran_on.add(task["child_id"])
    assert len(ran_on) > 1  # the pool's work was shared
