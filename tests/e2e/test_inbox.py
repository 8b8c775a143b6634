"""Inboxes over HTTP: what is sent to a user or a master, and the outcomes of the tasks a master
sent, reach it with its own key; acknowledged reads resume where a restarted client stopped;
another's inbox is refused; a wait answers when something arrives."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.api import AUTH, finished
from tests.support.bus import Bus, wait_for
from tests.support.sse import events

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

KEYS = {name: f"{name}-key-{uuid.uuid4().hex}" for name in ("ana", "bo", "boss", "ops")}
SCOPES = {"ana": ["send"], "bo": ["send"], "boss": ["send"], "ops": ["read"]}


def _keys_json() -> str:
    return json.dumps(
        [
            {"name": n, "sha256": hashlib.sha256(k.encode()).hexdigest(), "scopes": SCOPES[n]}
            for n, k in KEYS.items()
        ]
    )


def _as(name: str) -> dict[str, str]:
    return {"X-Relay-API-Key": KEYS[name]}


def _inbox(bus: Bus, name: str, key: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{bus.api}/api/relay/inbox/{name}", params=params, headers=_as(key), timeout=30
    )


def _send(bus: Bus, key: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{bus.api}/api/relay/send", json=body, headers=_as(key), timeout=10)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_a_user_reads_its_inbox_with_its_own_key_and_resumes_after_its_ack(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api(RELAY_KEYS=_keys_json())
    for text in ("hello", "how are you"):
        _send(bus, "boss", **{"from": "boss", "to": "ana", "text": text})
    _send(bus, "boss", **{"from": "boss", "to": "bo", "text": "not for ana"})

    got = wait_for(lambda: len(_inbox(bus, "ana", "ana").json()["entries"]) == 2 and
                   _inbox(bus, "ana", "ana").json(), what="ana's messages")  # fmt: skip
    assert [e["text"] for e in got["entries"]] == ["hello", "how are you"]
    assert got["acked"] == 0 and all(e["to"] == "ana" for e in got["entries"])

    # Another's inbox: refused, with or without entries in it; an operator's `read` key reads it.
    refused = _inbox(bus, "bo", "ana")
    assert refused.status_code == 403 and refused.json()["status"] == "error", refused.text
    assert len(_inbox(bus, "bo", "ops").json()["entries"]) == 1
    forged_ack = httpx.post(
        f"{bus.api}/api/relay/inbox/bo/ack", json={"up_to": 1}, headers=_as("ana"), timeout=10
    )
    assert forged_ack.status_code == 403

    # Ana read the first one; a restarted client asks without `after` and gets what follows.
    first = got["entries"][0]["id"]
    ack = httpx.post(
        f"{bus.api}/api/relay/inbox/ana/ack", json={"up_to": first}, headers=_as("ana"), timeout=10
    )
    assert ack.status_code == 200 and ack.json()["acked"] == first, ack.text
    again = _inbox(bus, "ana", "ana").json()
    assert [e["text"] for e in again["entries"]] == ["how are you"] and again["acked"] == first
    # An older ack changes nothing; one beyond the log acknowledges up to its newest entry.
    older = httpx.post(
        f"{bus.api}/api/relay/inbox/ana/ack", json={"up_to": 0}, headers=_as("ana"), timeout=10
    )
    assert older.json()["acked"] == first
    beyond = httpx.post(
        f"{bus.api}/api/relay/inbox/ana/ack", json={"up_to": 10**12}, headers=_as("ana"),
        timeout=10,
    )  # fmt: skip
    assert beyond.status_code == 200 and beyond.json()["acked"] < 10**12, beyond.text  # newest
    wrong_type = httpx.post(
        f"{bus.api}/api/relay/inbox/ana/ack", json={"up_to": True}, headers=_as("ana"), timeout=10
    )
    assert wrong_type.status_code == 422, wrong_type.text
    # `after` reads from anywhere, the acknowledged position stays.
    assert len(_inbox(bus, "ana", "ana", after=0).json()["entries"]) == 2

    # A wait answers once something arrives.
    last = again["entries"][-1]["id"]
    httpx.post(f"{bus.api}/api/relay/inbox/ana/ack", json={"up_to": last}, headers=_as("ana"))
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(_inbox, bus, "ana", "ana", wait=30)
        wait_for(lambda: _api_waits(bus) == 1, what="the wait")
        _send(bus, "bo", **{"from": "bo", "to": "ana", "text": "are you there?"})
        arrived = waiting.result().json()
    assert [e["text"] for e in arrived["entries"]] == ["are you there?"]
    assert time.monotonic() - started < 25  # woken, not timed out


def test_a_master_finds_the_outcomes_of_its_tasks_in_its_inbox_and_stream(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api(RELAY_KEYS=_keys_json(), RELAY_STREAM_KEEPALIVE_S="0.5")
    with httpx.stream(
        "GET", f"{bus.api}/api/relay/stream", params={"to": "boss"}, headers=_as("ops"),
        timeout=httpx.Timeout(30),
    ) as live:  # fmt: skip
        assert live.status_code == 200
        done = _send(bus, "boss", **{"from": "boss", "to": "child", "type": "task", "cmd": "echo",
                                     "payload": {"n": 1}})["task_id"]  # fmt: skip
        failed = _send(bus, "boss", **{"from": "boss", "to": "child", "type": "task",
                                       "cmd": "boom"})["task_id"]  # fmt: skip
        wait_for(lambda: finished(bus, done) and finished(bus, failed), timeout=60)
        streamed = []
        for event in events(live):
            if event.data is not None:
                streamed.append(event.data)
            if len(streamed) == 2:
                break
    inbox = _inbox(bus, "boss", "boss").json()["entries"]
    outcomes = {e["task_id"]: e for e in inbox}
    assert set(outcomes) == {done, failed}, inbox
    assert outcomes[done]["event"] == "callback"
    assert outcomes[done]["result"]["echo"]["payload"] == {"n": 1}
    assert outcomes[failed]["event"] in ("callback", "dead") and "boom" in outcomes[failed]["error"]
    # The stream filtered by `to` carries the same outcomes, as GET /logs with `to` does.
    assert sorted(e["id"] for e in streamed) == sorted(e["id"] for e in inbox)
    logged = httpx.get(
        f"{bus.api}/api/relay/logs", params={"to": "boss"}, headers=AUTH, timeout=10
    ).json()["logs"]
    assert [e["id"] for e in logged] == [e["id"] for e in inbox]
    # A child's key, the sender of none of them, reads none.
    assert _inbox(bus, "boss", "bo").status_code == 403


def _api_waits(bus: Bus) -> float | None:
    from tests.support.ops import sample

    return sample(httpx.get(f"{bus.api}/metrics", timeout=5).text, "convbus_api_waits")
