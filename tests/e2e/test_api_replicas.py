"""API replicas behind one address: with RELAY_LIMITS_URL they count the limits together."""

from __future__ import annotations

import httpx
import pytest

from cli.processes import free_port
from tests.support.bus import API_KEY, Bus, http_ready, wait_for


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
