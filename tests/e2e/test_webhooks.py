"""Webhooks over HTTP: a task sent with `notify` has each change of state it names POSTed,
signed, to its URL, at least once: a receiver that fails twice gets the same delivery three
times and accepts it once; a receiver that keeps failing has the delivery parked, and a replay
delivers it; a URL outside RELAY_WEBHOOK_HOSTS is refused at the send."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from shared.topology import WEBHOOK_POOL
from tests.support.api import AUTH, finished, logs, send, send_task
from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

SECRET = "whsec-test-" + "x" * 24


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers `statuses` in turn (then the last one)."""

    statuses: list[int]
    calls: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def accepted(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if 200 <= c["status"] < 300]


def _verified(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, as docs/wire.md shows it."""
    timestamp = headers["x-convbus-timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(
        f"v1={expected.hexdigest()}", headers["x-convbus-signature"]
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(statuses=[200])

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.statuses[min(len(state.calls), len(state.statuses) - 1)]
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = _verified(headers, body)
            state.calls.append(
                {"status": status, "headers": headers, "body": body, "json": json.loads(body),
                 "verified": verified}
            )  # fmt: skip
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.server.shutdown()
        state.server.server_close()


def _start(bus: Bus, receiver: Receiver) -> None:
    env = {"RELAY_WEBHOOK_HOSTS": receiver.host, "RELAY_WEBHOOK_SECRET": SECRET}
    bus.namespace.pools.add(WEBHOOK_POOL)
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start("webhooks", "webhooks", **env)
    bus.start_api(**env)


def test_a_receiver_that_fails_twice_accepts_each_delivery_once(
    bus: Bus, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503, 200]
    _start(bus, receiver)
    task_id = send_task(bus, "echo", payload={"n": 7}, notify={"url": receiver.url})
    wait_for(receiver.accepted, timeout=60, what="the delivery to be accepted")
    assert finished(bus, task_id)["task_status"] == "completed"

    calls = receiver.calls
    assert [c["status"] for c in calls] == [500, 503, 200]
    assert all(c["verified"] for c in calls), "a delivery's signature does not verify"
    assert len({c["headers"]["x-convbus-delivery"] for c in calls}) == 1  # one delivery, sent 3x
    assert len({c["body"] for c in calls}) == 1
    delivery = calls[0]["json"]
    assert delivery["task_id"] == task_id and delivery["task_status"] == "completed"
    assert delivery["entry"]["event"] == "callback"
    assert delivery["entry"]["result"]["echo"]["payload"] == {"n": 7}

    # The delivery is a task of the bus's own: in the log, completed, and never sent again.
    delivery_id = delivery["delivery_id"]
    assert delivery_id == calls[0]["headers"]["x-convbus-delivery"]
    done = wait_for(lambda: finished(bus, delivery_id), what="the delivery's record")
    assert done["task_status"] == "completed" and done["attempts"] == 3, done
    kinds = [e["event"] for e in logs(bus, task_id=delivery_id)]
    assert kinds[0] == "send" and kinds.count("retry") == 2 and kinds[-1] == "callback", kinds
    assert len(receiver.calls) == 3


def test_a_delivery_that_keeps_failing_is_parked_and_a_replay_delivers_it(
    bus: Bus, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    _start(bus, receiver)
    task_id = send_task(
        bus, "echo", notify={"url": receiver.url, "events": ["processing", "completed"]}
    )
    wait_for(lambda: finished(bus, task_id), what="the task")

    def parked() -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{bus.api}/api/relay/dlq", params={"pool": WEBHOOK_POOL}, headers=AUTH, timeout=10
        )
        found: list[dict[str, Any]] = answer.json()["parked"]
        return found if len(found) == 2 else []

    deliveries = wait_for(parked, timeout=60, what="both deliveries parked")
    assert not receiver.accepted() and len(receiver.calls) == 6  # 2 deliveries x 3 attempts
    receiver.statuses = [200]
    for delivery in deliveries:
        replay = httpx.post(
            f"{bus.api}/api/relay/dlq/{delivery['task_id']}/replay", headers=AUTH, timeout=10
        )
        assert replay.status_code == 200, replay.text
    wait_for(lambda: len(receiver.accepted()) == 2, timeout=60, what="the replayed deliveries")
    states = sorted(c["json"]["task_status"] for c in receiver.accepted())
    assert states == ["completed", "processing"]


def test_a_webhook_outside_the_allowed_hosts_is_refused(bus: Bus, receiver: Receiver) -> None:
    _start(bus, receiver)
    for url in (
        "http://169.254.169.254/latest/meta-data",  # a cloud's metadata service
        "http://127.0.0.1:1/hook",  # the allowed host, on another port
        "http://localhost" + receiver.url.removeprefix("http://127.0.0.1"),  # another name
        "ftp://127.0.0.1/x",
    ):
        answer = send(bus, type="task", cmd="echo", notify={"url": url})
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["status"] == "error" and "notify" in answer.json()["msg"]
    to_own_pool = send(bus, type="task", cmd="echo", to=WEBHOOK_POOL)
    assert to_own_pool.status_code == 422, to_own_pool.text
