"""Scoped keys: who may send, call back, read, administer; 401 and 403 in the contract shape."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import httpx
import pytest

from tests.support.bus import API_KEY, Bus

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

KEYS = {name: secrets.token_urlsafe(24) for name in ("master", "bazi", "reader", "ops", "user")}
SPECS = [
    {"name": "master", "scopes": ["send", "read"]},
    {"name": "child_bazi", "key": "bazi", "scopes": ["callback"], "pools": ["child_bazi"]},
    {"name": "dashboard", "key": "reader", "scopes": ["read"]},
    {"name": "ops", "scopes": ["admin"]},
    {"name": "user:u123", "key": "user", "scopes": ["send"], "pools": ["child_bazi"]},
]


def keys_json() -> str:
    return json.dumps(
        [
            {
                "name": spec["name"],
                "sha256": hashlib.sha256(KEYS[spec.get("key", spec["name"])].encode()).hexdigest(),
                "scopes": spec["scopes"],
                **({"pools": spec["pools"]} if "pools" in spec else {}),
            }
            for spec in SPECS
        ]
    )


def post(bus: Bus, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"X-Relay-API-Key": key} if key is not None else {}
    return httpx.post(f"{bus.api}/api/relay/{path}", json=body, headers=headers, timeout=10)


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["status"] == "error" and response.json()["msg"]


def test_keys_scopes_identities_and_pools(bus: Bus) -> None:
    bus.namespace.pools.add("child_bazi")
    bus.start_api(RELAY_KEYS=keys_json())
    task = {"from": "master", "to": "child_bazi", "type": "task", "cmd": "echo"}

    # Missing or wrong key: 401, on every write endpoint.
    for path, body in (
        ("send", task),
        ("callback", {"task_id": "t_x"}),
        ("callbacks", {"callbacks": [{"callback": {"task_id": "t_x"}}]}),
        ("ack", {"task_id": "t_x"}),
    ):
        for key in (None, "wrong", ""):
            response = post(bus, path, body, key)
            assert response.json() == {
                "status": "error",
                "msg": "Unauthorized: Invalid or missing API key",
            }
    # A valid key without the scope: 403.
    assert_error(post(bus, "send", task, KEYS["reader"]), 403)
    assert_error(post(bus, "send", task, KEYS["bazi"]), 403)
    assert_error(post(bus, "ack", {"task_id": "t_x"}, KEYS["reader"]), 403)

    # Send as yourself only; the master's task goes through.
    sent = post(bus, "send", task, KEYS["master"])
    assert sent.status_code == 200
    bazi_task = sent.json()["task_id"]
    as_master = {"from": "master", "to": "user:u123", "text": "hi"}
    assert_error(post(bus, "send", as_master, KEYS["user"]), 403)
    mine = {"from": "user:u123", "to": "master", "text": "hello"}
    assert post(bus, "send", mine, KEYS["user"]).status_code == 200
    # ... and to your own pools only.
    other_pool = {"from": "user:u123", "to": "child", "type": "task", "cmd": "echo"}
    assert_error(post(bus, "send", other_pool, KEYS["user"]), 403)

    # A child key bound to child_bazi calls back child_bazi's tasks, not another pool's.
    elsewhere = post(bus, "send", {**task, "to": "child"}, KEYS["master"]).json()["task_id"]
    assert_error(post(bus, "callback", {"task_id": elsewhere}, KEYS["bazi"]), 403)
    callback = post(bus, "callback", {"task_id": bazi_task, "result": 1}, KEYS["bazi"])
    assert callback.status_code == 200 and callback.json() == {"status": "ok"}
    assert_error(post(bus, "callback", {"task_id": bazi_task}, KEYS["master"]), 403)
    # So does a batch: each callback is answered as it would be alone.
    batch = {"callbacks": [{"callback": {"task_id": t}} for t in (elsewhere, bazi_task)]}
    answers = post(bus, "callbacks", batch, KEYS["bazi"]).json()["results"]
    assert [a["code"] for a in answers] == [403, 200]
    assert_error(post(bus, "callbacks", batch, KEYS["master"]), 403)
    # Client-chosen ids too, before any tracker has seen them (none runs here).
    for task_id, pool, status in (("job-b1", "child_bazi", 200), ("job-c1", "child", 403)):
        chosen = {**task, "to": pool, "task_id": task_id}
        assert post(bus, "send", chosen, KEYS["master"]).status_code == 200
        answer = post(bus, "callback", {"task_id": task_id}, KEYS["bazi"])
        assert answer.status_code == status, answer.text

    # Logs need `read`; the parking lots need `admin`.
    logs = f"{bus.api}/api/relay/logs"
    assert_error(httpx.get(logs, timeout=5), 401)
    assert_error(httpx.get(logs, headers={"X-Relay-API-Key": KEYS["bazi"]}, timeout=5), 403)
    assert httpx.get(logs, headers={"X-Relay-API-Key": KEYS["reader"]}, timeout=5).is_success
    dlq = f"{bus.api}/api/relay/dlq"
    assert_error(httpx.get(dlq, headers={"X-Relay-API-Key": KEYS["master"]}, timeout=5), 403)
    assert httpx.get(dlq, headers={"X-Relay-API-Key": KEYS["ops"]}, timeout=10).is_success
    # RELAY_API_KEY still holds every scope (the seed's single key).
    root = httpx.get(dlq, headers={"X-Relay-API-Key": API_KEY}, timeout=10)
    assert root.is_success
    # task-status stays open (ids are unguessable).
    assert httpx.get(f"{bus.api}/api/relay/task-status/{bazi_task}", timeout=5).is_success


def test_scoped_keys_alone_need_an_id_secret(bus: Bus) -> None:
    api = bus.start(
        "api", "api", "--port", str(bus.api_port), RELAY_API_KEY="", RELAY_KEYS=keys_json()
    )
    assert api.popen.wait(30) != 0
    assert "RELAY_ID_SECRET is not set" in api.output()


def test_sends_and_failed_authentications_are_rate_limited(bus: Bus) -> None:
    bus.start_api(
        RELAY_KEYS=keys_json(),
        RELAY_SEND_RATE="0.5",
        RELAY_SEND_BURST="2",
        RELAY_AUTH_FAILURE_RATE="0.5",
        RELAY_AUTH_FAILURE_BURST="3",
    )
    message = {"from": "master", "to": "user:u1", "text": "hi"}
    answers = [post(bus, "send", message, KEYS["master"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert_error(answers[2], 429)
    assert int(answers[2].headers["Retry-After"]) >= 1
    # Another key has its own bucket.
    assert post(bus, "send", {**message, "from": "user:u123"}, KEYS["user"]).status_code == 200

    failures = [post(bus, "send", message, "wrong").status_code for _ in range(4)]
    assert failures == [401, 401, 401, 429]
    # While the client is blocked, even a right key waits.
    blocked = post(bus, "send", {**message, "from": "user:u123"}, KEYS["user"])
    assert_error(blocked, 429)
    assert "Retry-After" in blocked.headers


def test_a_forwarded_address_counts_only_from_a_trusted_proxy(bus: Bus) -> None:
    limits = {"RELAY_AUTH_FAILURE_RATE": "0.01", "RELAY_AUTH_FAILURE_BURST": "3"}

    def wrong_key(client: str) -> int:
        headers = {"X-Relay-API-Key": "wrong", "X-Forwarded-For": client}
        return httpx.get(f"{bus.api}/api/relay/me", headers=headers, timeout=10).status_code

    # No proxy trusted (the default): a client cannot pick its own address, one bucket here.
    api = bus.start_api(**limits)
    assert [wrong_key(f"198.51.100.{n}") for n in range(4)] == [401, 401, 401, 429]
    api.stop()
    # This address a proxy: each client behind it has its own bucket.
    bus.start_api(RELAY_TRUSTED_PROXIES="127.0.0.1", **limits)
    assert [wrong_key("198.51.100.1") for _ in range(4)] == [401, 401, 401, 429]
    assert wrong_key("198.51.100.2") == 401


def test_the_openapi_pages_can_be_switched_off(bus: Bus) -> None:
    bus.start_api(RELAY_OPENAPI="false")
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = httpx.get(f"{bus.api}{path}", timeout=5)
        assert response.status_code == 404 and response.json()["status"] == "error"
