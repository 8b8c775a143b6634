"""The live stream (GET /stream, Server-Sent Events): every log entry as it is committed, each
once and in order, across a reconnection with Last-Event-ID and an API restart; filters;
keep-alives; a client that does not read is dropped rather than buffered for."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from typing import Any

import httpx
import pytest

from tests.support import sse
from tests.support.api import AUTH, finished, logs, send, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ops import sample

both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
STREAM = "/api/relay/stream"


class Listener:
    """A client that follows the stream and reconnects with Last-Event-ID, as EventSource does."""

    def __init__(self, bus: Bus, **params: Any) -> None:
        self.bus = bus
        self.params = params
        self.events: list[sse.Event] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.data is not None]

    def _follow(self) -> None:
        last_id: str | None = None
        while not self._stop.is_set():
            headers = dict(AUTH)
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with httpx.stream(
                    "GET", f"{self.bus.api}{STREAM}", params=self.params, headers=headers,
                    timeout=httpx.Timeout(5, read=2),
                ) as response:  # fmt: skip
                    if response.status_code != 200:
                        raise httpx.HTTPError(f"{response.status_code}")
                    self.connections += 1
                    for event in sse.events(response):
                        self.events.append(event)
                        last_id = event.id if event.id is not None else last_id
                        if self._stop.is_set():
                            return
            except httpx.HTTPError:
                self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@both_databases
def test_a_stream_gives_every_entry_once_in_order_across_an_api_restart(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    api = bus.start_api(RELAY_STREAM_KEEPALIVE_S="0.5")
    conversation = f"c-{uuid.uuid4().hex[:8]}"
    before = [send_task(bus, "echo", conversation_id=conversation) for _ in range(5)]
    wait_for(lambda: all(finished(bus, t) for t in before), what="the first tasks")

    listener = Listener(bus, conversation_id=conversation, after=0)
    try:
        during = [send_task(bus, "nap", conversation_id=conversation) for _ in range(5)]
        wait_for(lambda: len(listener.entries) >= 5, what="the first entries on the stream")
        api.stop()
        # The API ended the open stream when told to stop, rather than waiting for it until
        # uvicorn's graceful-shutdown timeout cancelled it.
        assert "timeout graceful shutdown exceeded" not in api.output()
        bus.procs.remove(api)
        bus.start_api(RELAY_STREAM_KEEPALIVE_S="0.5")
        after = [send_task(bus, "echo", conversation_id=conversation) for _ in range(5)]
        tasks = before + during + after
        wait_for(lambda: all(finished(bus, t) for t in tasks), timeout=60, what="every task")
        logged = logs(bus, conversation_id=conversation, limit=1000)
        wait_for(lambda: len(listener.entries) >= len(logged), what="the stream to catch up")
    finally:
        listener.close()
    assert listener.connections >= 2, "the stream was not reconnected"
    assert [e["id"] for e in listener.entries] == [e["id"] for e in logged]
    assert listener.entries == logged  # the same entries as GET /logs, each once, in order
    assert [e.id for e in listener.events if e.data] == [str(e["id"]) for e in logged]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stream_gives_what_its_filters_let_through(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api(RELAY_STREAM_KEEPALIVE_S="0.3")
    user = f"user-{uuid.uuid4().hex[:6]}"
    to_user = Listener(bus, to=user)
    messages_only = Listener(bus, event="message", **{"from": "master"})
    try:
        # From now on: a keep-alive first, since nothing is committed yet.
        for listener in (to_user, messages_only):  # both follow before anything is sent
            wait_for(lambda: any(e.comment for e in listener.events), what="a keep-alive")  # noqa: B023
        for text in ("one", "two"):
            answer = send(bus, type="message", to=user, text=text)
            assert answer.status_code == 200, answer.text
        assert send(bus, type="message", to="someone-else", text="three").status_code == 200
        task_id = send_task(bus, "echo")
        task_only = Listener(bus, task_id=task_id, after=0)
        wait_for(lambda: finished(bus, task_id), what="the task")
        wait_for(lambda: len(task_only.entries) >= 3, what="the task's entries")
        wait_for(lambda: len(messages_only.entries) >= 3, what="the messages")
    finally:
        for listener in (to_user, messages_only, task_only):
            listener.close()
    assert [e["text"] for e in to_user.entries] == ["one", "two"]
    assert [e["text"] for e in messages_only.entries] == ["one", "two", "three"]
    assert [e["event"] for e in task_only.entries] == ["send", "processing", "callback"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_client_that_does_not_read_is_dropped(bus: Bus) -> None:
    """A client that reads nothing fills the socket's buffers, then the stream's buffer of 10
    entries: the API closes its stream (it would reconnect with Last-Event-ID) rather than keep
    more for it."""
    bus.start_tracker()
    bus.start_api(RELAY_STREAM_BUFFER="10")
    lazy = socket.socket()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(("127.0.0.1", bus.api_port))
    key = AUTH["X-Relay-API-Key"]
    head = f"GET {STREAM}?event=message HTTP/1.1\r\nHost: api\r\nX-Relay-API-Key: {key}\r\n"
    lazy.sendall(f"{head}\r\n".encode())
    try:
        wait_for(lambda: _api_metric(bus, "convbus_api_streams") == 1, what="the stream")
        text = "x" * 60_000
        sent = 0
        while _api_metric(bus, "convbus_api_streams_dropped_total") != 1:
            assert sent < 2000, "the stream was never dropped"
            for _ in range(10):
                assert send(bus, type="message", to="user", text=text).status_code == 200
            sent += 10
        assert _api_metric(bus, "convbus_api_streams") == 0
        # The API closed the connection: reading what is left ends.
        lazy.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while lazy.recv(1 << 20):
                pass
    finally:
        lazy.close()


def _api_metric(bus: Bus, name: str, **labels: str) -> float | None:
    return sample(httpx.get(f"{bus.api}/metrics", timeout=5).text, name, **labels)
