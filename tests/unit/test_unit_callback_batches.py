"""services/child/callback.py, batched: outcomes share POST /callbacks, each keeps its answer.

Against a real local aiohttp server that answers each callback of a batch from a script per
task, and can hold its answers to let the next outcomes gather.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from services.child.callback import ALONE_BYTES, BATCHES_IN_FLIGHT, CallbackClient
from shared.contract import API_KEY_HEADER, FIRST_CALLBACK_HEADER, MAX_CALLBACKS
from shared.errors import CallbackFailed, CallbackRefused, UnknownTask
from shared.schemas import CallbackRequest
from tests.support.local_server import local_server

KEY = "unit-test-key"
OK = {"code": 200, "status": "ok"}


@dataclass
class Api:
    """A fake API. /callbacks answers each callback from `answers[task_id]` (the last repeats;
    OK by default), or the whole batch with `batch_status`; /callback answers `alone`."""

    base: str = ""
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    batch_status: int | None = None
    has_batches: bool = True
    alone: tuple[int, str] = (200, '{"status":"ok"}')
    #: While clear, /callbacks waits before it answers.
    open: asyncio.Event = field(default_factory=asyncio.Event)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    alone_bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    #: Batches still to be answered with an answer too many.
    extra_answers: int = 0

    async def batch(self, request: web.Request) -> web.Response:
        if not self.has_batches:
            return web.json_response({"status": "error", "msg": "not found"}, status=404)
        assert request.headers[API_KEY_HEADER] == KEY
        items = json.loads(await request.read())["callbacks"]
        self.batches.append(items)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.open.wait()
        finally:
            self.in_flight -= 1
        if self.batch_status is not None:
            return web.json_response({"status": "error", "msg": "whole"}, status=self.batch_status)
        results = [self._answer(i) for i in items]
        if self.extra_answers:
            self.extra_answers -= 1
            results.append(OK)
        return web.json_response({"status": "ok", "results": results})

    def _answer(self, item: dict[str, Any]) -> dict[str, Any]:
        task_id = item["callback"]["task_id"]
        n = self.seen[task_id] = self.seen.get(task_id, 0) + 1
        script = self.answers.get(task_id, [OK])
        return script[min(n, len(script)) - 1]

    async def single(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.alone_bodies.append({"first": request.headers.get(FIRST_CALLBACK_HEADER), **body})
        status, text = self.alone
        return web.Response(status=status, text=text, content_type="application/json")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    fake = Api()
    fake.open.set()
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/api/relay/callbacks", fake.batch)
    app.router.add_post("/api/relay/callback", fake.single)
    async with local_server(app) as fake.base:
        try:
            yield fake
        finally:
            fake.open.set()  # a handler still held would keep the server from closing


@pytest.fixture
async def client(api: Api) -> AsyncIterator[CallbackClient]:
    made = CallbackClient(api.base, KEY, attempts=3, backoff=0.01, timeout=5.0, batch=True)
    try:
        yield made
    finally:
        await made.close()


def outcome(task_id: str, **fields: Any) -> CallbackRequest:
    return CallbackRequest.model_validate({"task_id": task_id, "child_id": "w1"} | fields)


async def wait_until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_outcomes_that_come_while_batches_are_out_go_together(
    api: Api, client: CallbackClient
) -> None:
    api.open.clear()
    sends = [asyncio.create_task(client.send(outcome(f"t_{n}"), first=True)) for n in range(600)]
    # The first outcomes go at once, alone; the rest wait for a batch to come back.
    await wait_until(lambda: len(api.batches) == BATCHES_IN_FLIGHT)
    assert [len(b) for b in api.batches] == [1, 1]
    api.open.set()
    assert await asyncio.gather(*sends) == [False] * 600
    sizes = [len(b) for b in api.batches]
    assert sum(sizes) == 600 and max(sizes) == MAX_CALLBACKS
    assert api.most_in_flight == BATCHES_IN_FLIGHT
    # Each callback went once, whole, with the first-callback flag.
    items = [item for b in api.batches for item in b]
    assert sorted(i["callback"]["task_id"] for i in items) == sorted(f"t_{n}" for n in range(600))
    assert all(i["first"] is True for i in items)
    assert items[0]["callback"] == {"task_id": "t_0", "child_id": "w1", "status": "done"}


async def test_each_callback_keeps_its_own_answer(api: Api, client: CallbackClient) -> None:
    api.answers = {
        "t_dup": [{"code": 200, "status": "ok", "duplicate": True}],
        "t_gone": [{"code": 404, "status": "error", "msg": "task not found"}],
        "t_pool": [{"code": 403, "status": "error", "msg": "Forbidden"}],
        "t_busy": [{"code": 503, "status": "error", "msg": "down"}, OK],
    }
    api.open.clear()
    blocker = asyncio.create_task(client.send(outcome("t_first")))
    other = asyncio.create_task(client.send(outcome("t_second")))
    await wait_until(lambda: len(api.batches) == 2)  # the next ones gather behind these
    names = ["t_ok", "t_dup", "t_gone", "t_pool", "t_busy"]
    sends = [asyncio.create_task(client.send(outcome(n), first=True)) for n in names]
    await asyncio.sleep(0.05)
    api.open.set()
    done = await asyncio.gather(*sends, blocker, other, return_exceptions=True)
    ok, dup, gone, pool, busy = done[:5]
    assert ok is False and dup is True and busy is False
    assert isinstance(gone, UnknownTask) and "t_gone" in str(gone)
    assert isinstance(pool, CallbackRefused) and "HTTP 403" in str(pool)
    assert [len(b) for b in api.batches][:3] == [1, 1, 5]
    # Only the one the API could not take this time went again, and not as the first try.
    (again,) = api.batches[3:]
    assert again == [{"callback": {"task_id": "t_busy", "child_id": "w1", "status": "done"}}]


async def test_a_batch_the_api_cannot_answer_is_retried_callback_by_callback(
    api: Api, client: CallbackClient
) -> None:
    api.batch_status = 503
    sends = [asyncio.create_task(client.send(outcome(f"t_{n}"))) for n in range(3)]
    await wait_until(lambda: len(api.batches) >= 3)
    api.batch_status = None
    assert await asyncio.gather(*sends) == [False] * 3


async def test_a_batch_that_always_fails_fails_each_callback_after_its_attempts(
    api: Api, client: CallbackClient
) -> None:
    api.batch_status = 500
    with pytest.raises(CallbackFailed, match="failed 3 times: HTTP 500"):
        await client.send(outcome("t_1"))
    assert len(api.batches) == 3


@pytest.mark.parametrize("status", [401, 403])
async def test_a_key_refused_refuses_every_callback_of_the_batch(
    api: Api, client: CallbackClient, status: int
) -> None:
    api.batch_status = status
    with pytest.raises(CallbackRefused, match=f"HTTP {status}"):
        await client.send(outcome("t_1"))
    assert len(api.batches) == 1


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_batch_refused_whole_is_posted_callback_by_callback(
    api: Api, client: CallbackClient, status: int
) -> None:
    api.batch_status = status
    assert await client.send(outcome("t_1", result=1), first=True) is False
    assert api.alone_bodies == [
        {"first": "1", "task_id": "t_1", "child_id": "w1", "status": "done", "result": 1}
    ]
    assert client.batch  # only an API without /callbacks stops the batches


async def test_an_api_without_batches_gets_each_callback_alone_from_then_on(
    api: Api, client: CallbackClient
) -> None:
    api.has_batches = False
    api.alone = (200, '{"status":"ok","duplicate":true}')
    assert await client.send(outcome("t_1")) is True
    assert await client.send(outcome("t_2")) is True
    assert not client.batch
    assert [b["task_id"] for b in api.alone_bodies] == ["t_1", "t_2"]
    assert api.batches == []


async def test_a_large_outcome_goes_alone(api: Api, client: CallbackClient) -> None:
    assert await client.send(outcome("t_big", result="x" * ALONE_BYTES)) is False
    assert await client.send(outcome("t_small", result="x")) is False
    assert [b["task_id"] for b in api.alone_bodies] == ["t_big"]
    assert [[i["callback"]["task_id"] for i in b] for b in api.batches] == [["t_small"]]


async def test_a_wrong_number_of_answers_is_no_answer(api: Api, client: CallbackClient) -> None:
    api.extra_answers = 1  # the first batch's answer has one answer too many
    assert await client.send(outcome("t_1")) is False
    assert len(api.batches) == 2  # tried again


async def test_a_sender_that_stops_waiting_is_left_out(api: Api, client: CallbackClient) -> None:
    api.open.clear()
    first = [asyncio.create_task(client.send(outcome(f"t_{n}"))) for n in range(2)]
    await wait_until(lambda: len(api.batches) == 2)
    gone = asyncio.create_task(client.send(outcome("t_gone")))
    kept = asyncio.create_task(client.send(outcome("t_kept")))
    await asyncio.sleep(0.02)
    gone.cancel()
    api.open.set()
    assert await asyncio.gather(*first, kept) == [False] * 3
    sent = [i["callback"]["task_id"] for b in api.batches for i in b]
    assert "t_gone" not in sent and sent.count("t_kept") == 1


async def test_close_ends_what_waits(api: Api, client: CallbackClient) -> None:
    api.open.clear()
    sends = [asyncio.create_task(client.send(outcome(f"t_{n}"))) for n in range(4)]
    await wait_until(lambda: len(api.batches) == 2)
    await client.close()
    done = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 5)
    assert all(isinstance(d, asyncio.CancelledError) for d in done), done
