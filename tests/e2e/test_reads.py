"""Reads bound to who asks: an operator's key reads everything; any other key its own entries,
tasks, conversations and stream; a task's payload and result are withheld from a caller who
has only its id, while its state stays open (the seed's task-status)."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

KEYS = {n: f"{n}-{uuid.uuid4().hex}" for n in ("boss", "ana", "pool", "ops")}
SPECS: dict[str, dict[str, Any]] = {
    "boss": {"scopes": ["send"]},
    "ana": {"scopes": ["send"]},
    "pool": {"scopes": ["callback"], "pools": ["child"]},
    "ops": {"scopes": ["read"]},
}
PRIVATE = ["payload", "result"]


def _keys_json() -> str:
    return json.dumps([
        {"name": n, "sha256": hashlib.sha256(k.encode()).hexdigest(), **SPECS[n]}
        for n, k in KEYS.items()
    ])  # fmt: skip


def _get(bus: Bus, path: str, who: str | None, **params: Any) -> httpx.Response:
    headers = {"X-Relay-API-Key": KEYS[who]} if who else {}
    return httpx.get(f"{bus.api}/api/relay/{path}", params=params, headers=headers, timeout=10)


def _send(bus: Bus, who: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{bus.api}/api/relay/send", json=body, headers={"X-Relay-API-Key": KEYS[who]}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_each_key_reads_its_own_and_an_operator_everything(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api(RELAY_KEYS=_keys_json())
    task_id = _send(bus, "boss", **{"from": "boss", "to": "child", "type": "task", "cmd": "echo",
                                    "payload": {"secret": 42}, "conversation_id": "c-boss"},
                    )["task_id"]  # fmt: skip
    _send(bus, "ana", **{"from": "ana", "to": "boss", "text": "hi", "conversation_id": "c-ana"})
    wait_for(
        lambda: _get(bus, f"tasks/{task_id}", "ops").json()["task_status"] == "completed",
        what="the task",
    )

    # The record: whole to its sender, its pool's key and an operator; the state to anyone.
    for who in ("boss", "pool", "ops"):
        record = _get(bus, f"tasks/{task_id}", who).json()
        assert record["payload"] == {"secret": 42} and record["withheld"] is None, (who, record)
    for who in (None, "ana"):
        record = _get(bus, f"tasks/{task_id}", who).json()
        assert record["task_status"] == "completed", record
        assert record["payload"] is None and record["result"] is None, (who, record)
        assert set(PRIVATE) <= set(record["withheld"]), (who, record)
    assert _get(bus, f"task-status/{task_id}", None).json()["task_status"] == "completed"
    assert _get(bus, f"tasks/{task_id}", None, wait=1).json()["payload"] is None
    assert _get(bus, f"tasks/{task_id}", None).status_code == 200
    wrong = httpx.get(
        f"{bus.api}/api/relay/tasks/{task_id}", headers={"X-Relay-API-Key": "nope"}, timeout=10
    )
    assert wrong.status_code == 401

    # The log and the stream: an operator reads anything; others their own, by filter.
    assert len(_get(bus, "logs", "ops").json()["logs"]) >= 4
    allowed = [
        ("boss", {"from": "boss"}), ("boss", {"to": "boss"}), ("boss", {"task_id": task_id}),
        ("boss", {"conversation_id": "c-boss", "from": "boss"}),
        ("ana", {"conversation_id": "c-ana", "from": "ana"}),
        ("boss", {"conversation_id": "c-ana", "to": "boss"}), ("pool", {"task_id": task_id}),
    ]  # fmt: skip
    for who, filters in allowed:
        answer = _get(bus, "logs", who, **filters)
        assert answer.status_code == 200 and answer.json()["logs"], (who, filters, answer.text)
    refused = [
        ("boss", {}), ("ana", {"from": "boss"}), ("ana", {"task_id": task_id}),
        ("ana", {"conversation_id": "c-boss"}), ("pool", {}), ("ana", {"event": "send"}),
        # Sending into a conversation does not open it: anyone may, knowing its id.
        ("ana", {"conversation_id": "c-ana"}),
    ]  # fmt: skip
    for who, filters in refused:
        answer = _get(bus, "logs", who, **filters)
        assert answer.status_code == 403, (who, filters, answer.text)
        assert answer.json()["status"] == "error"
        with httpx.stream(
            "GET", f"{bus.api}/api/relay/stream", params=filters,
            headers={"X-Relay-API-Key": KEYS[who]}, timeout=10,
        ) as streamed:  # fmt: skip
            assert streamed.status_code == 403, (who, filters)
    assert _get(bus, "logs", None).status_code == 401
    # What boss reads addressed to it: ana's message and its task's outcome.
    to_boss = _get(bus, "logs", "boss", to="boss").json()["logs"]
    assert {e["event"] for e in to_boss} == {"message", "callback"}, to_boss
    with httpx.stream(
        "GET", f"{bus.api}/api/relay/stream", params={"to": "ana"},
        headers={"X-Relay-API-Key": KEYS["ana"]}, timeout=10,
    ) as own:  # fmt: skip
        assert own.status_code == 200
