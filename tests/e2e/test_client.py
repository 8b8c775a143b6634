"""The Python client (convbus.Client and AsyncClient) against the real bus: a master sends and
waits, answers a question, cancels; a user reads its inbox; a send whose answer is lost, or
whose connection drops, is retried under one idempotency key and makes one task; a stream
resumes across an API restart without a gap or a repeat; the contract's errors arrive as
exceptions with the server's message."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from convbus import (
    AsyncClient,
    Backoff,
    Client,
    Conflict,
    Entry,
    Forbidden,
    Invalid,
    NotFound,
    WaitTimedOut,
)
from tests.e2e.test_keys import KEYS, keys_json
from tests.support.api import logs
from tests.support.bus import API_KEY, Bus

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
QUICK = Backoff(first=0.05, cap=0.5)


def master(bus: Bus, **options: object) -> Client:
    return Client(bus.api, API_KEY, name="master", backoff=QUICK, **options)  # type: ignore[arg-type]


def test_a_master_in_a_few_lines(bus: Bus) -> None:
    bus.start_all()
    with master(bus) as client:
        done = client.send_and_wait("child", "echo", payload={"n": 1}, timeout=30)
        assert done.task_status == "completed"
        assert done.result == {"echo": {"cmd": "echo", "payload": {"n": 1}, "text": None}}
        assert client.status(done.task_id) == "completed"
        assert client.task(done.task_id).from_ == "master"

        # A question, answered: the task comes back and completes with the answer.
        asked = client.send("child", "ask", payload={"questions": ["Which one?"]})
        waiting = client.wait(asked, timeout=30)
        assert waiting.task_status == "input_required" and waiting.asking is not None
        assert waiting.asking.question == "Which one?"
        assert client.answer(asked, {"pick": "b"}) == 1
        assert client.answer(asked, {"pick": "b"}) == 1  # the same answer again: a retry
        with pytest.raises(Conflict, match=r"not waiting for input|answered already"):
            client.answer(asked, {"pick": "c"})
        finished = client.wait(asked, timeout=30)
        assert finished.task_status == "completed" and finished.result["answers"] == [{"pick": "b"}]

        # Cancel, and the contract's errors as exceptions with the server's message.
        later = client.send("child", "echo", delay_s=600)
        client.cancel(later)
        assert client.wait(later, timeout=30).task_status == "canceled"
        with pytest.raises(Conflict, match="already completed"):
            client.cancel(done.task_id)
        with pytest.raises(NotFound, match="task not found") as missing:
            client.status("t_nosuchtask")
        assert missing.value.status == 404
        with pytest.raises(Invalid) as bad:
            client.send("bad pool name!", "echo")
        assert bad.value.status == 422 and bad.value.errors
        slow = client.send("child", "nap", payload={"seconds": 5})
        with pytest.raises(WaitTimedOut):
            client.wait(slow, timeout=0.5)
        client.cancel(slow)


def test_a_user_reads_its_inbox(bus: Bus) -> None:
    bus.start_all(RELAY_KEYS=keys_json())
    with Client(bus.api, KEYS["master"], name="master", backoff=QUICK) as boss:
        boss.message("user:u123", "Your report is ready", conversation_id="c-9")
    with Client(bus.api, KEYS["user"], name="user:u123", backoff=QUICK) as user:
        inbox = user.inbox(wait=10)
        assert [(e.event, e.get("text")) for e in inbox.entries] == [
            ("message", "Your report is ready")
        ]
        assert inbox.entries[0].from_ == "master" and inbox.acked == 0
        assert user.ack_inbox(inbox.entries[-1].id) == inbox.entries[-1].id
        assert user.inbox(wait=0.2).entries == []  # read: a restarted program goes on after it
        with pytest.raises(Forbidden):
            user.inbox("master")


class LossyProxy:
    """Forwards to the API; of the first two sends, it answers the first with 503 and cuts the
    second's connection without an answer, though the API took both."""

    def __init__(self, target: str) -> None:
        #: The Idempotency-Key of each send it forwarded.
        self.keys: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = httpx.post(target + self.path, content=body, headers=headers, timeout=30)
                proxy.keys.append(self.headers.get("Idempotency-Key", ""))
                if len(proxy.keys) == 1:
                    self._answer(503, b'{"status":"error","msg":"injected"}')
                elif len(proxy.keys) == 2:
                    self.close_connection = True  # no answer at all
                else:
                    self._answer(upstream.status_code, upstream.content)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def lossy_proxy(target: str) -> Iterator[LossyProxy]:
    proxy = LossyProxy(target)
    threading.Thread(target=proxy.server.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


def test_a_send_retried_after_a_lost_answer_makes_one_task(bus: Bus) -> None:
    bus.start_all()
    with (
        lossy_proxy(bus.api) as proxy,
        Client(proxy.url, API_KEY, name="master", backoff=QUICK) as client,
    ):
        task_id = client.send("child", "echo", conversation_id="c-once")
    with master(bus) as direct:
        assert direct.wait(task_id, timeout=30).task_status == "completed"
    sends = [e for e in logs(bus, conversation_id="c-once") if e["event"] == "send"]
    assert [e["task_id"] for e in sends] == [task_id]  # three publishes asked for, one task
    keys = proxy.keys
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0], keys  # one key, three tries


def test_a_stream_resumes_across_an_api_restart(bus: Bus) -> None:
    bus.start_tracker()
    api = bus.start_api()
    got: list[Entry] = []
    with master(bus, retries=20) as client:
        for n in range(3):
            client.message("ana", f"before {n}", conversation_id="c-s")
        stream = client.stream(conversation_id="c-s", after=0)
        got += [next(stream) for _ in range(3)]
        api.kill()  # the connection drops; the client reconnects after the last id it saw
        bus.procs.remove(api)
        bus.start_api()
        for n in range(3):
            client.message("ana", f"after {n}", conversation_id="c-s")
        got += [next(stream) for _ in range(3)]
        stream.close()
    texts = [e.get("text") for e in got]
    assert texts == [f"before {n}" for n in range(3)] + [f"after {n}" for n in range(3)]
    ids = [e.id for e in got]
    assert ids == sorted(set(ids))  # none missed between, none twice


def test_the_async_client(bus: Bus) -> None:
    bus.start_all()

    async def scenario() -> None:
        async with AsyncClient(bus.api, API_KEY, name="master", backoff=QUICK) as client:
            done = await client.send_and_wait("child", "echo", text="hi", timeout=30)
            assert done.task_status == "completed" and done.result["echo"]["text"] == "hi"
            asked = await client.send("child", "ask", conversation_id="c-a")
            assert (await client.wait(asked, timeout=30)).task_status == "input_required"
            inbox = await client.inbox(wait=5)
            question = [e for e in inbox.entries if e.task_id == asked]
            assert question and question[0].get("question") == "which one?"
            assert await client.answer(asked, "this one") == 1
            assert (await client.wait(asked, timeout=30)).result["answers"] == ["this one"]
            events = []
            async for entry in client.stream(task_id=asked, after=0):
                events.append(entry.event)
                if entry.event == "callback":
                    break
            assert events[0] == "send" and "input_required" in events and "input" in events
            with pytest.raises(NotFound):
                await client.task("t_nosuchtask")

    asyncio.run(asyncio.wait_for(scenario(), 60))
