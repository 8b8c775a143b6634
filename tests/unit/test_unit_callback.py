"""services/child/callback.py: the callback client against a real local aiohttp server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.child.callback import IDLE_CONNECTION_SECONDS, CallbackClient
from shared.contract import API_IDLE_CONNECTION_SECONDS, API_KEY_HEADER, FIRST_CALLBACK_HEADER
from shared.errors import CallbackFailed, CallbackRefused, UnknownTask
from shared.schemas import CallbackRequest
from tests.support.local_server import local_server

KEY = "unit-test-key"
OK = (200, '{"status":"ok"}')


@dataclass
class Api:
    """A fake API: answers from a script (the last answer repeats) and records requests."""

    base: str = ""
    script: list[tuple[int, str]] = field(default_factory=lambda: [OK])
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "method": request.method,
                "key": request.headers.get(API_KEY_HEADER),
                "first": request.headers.get(FIRST_CALLBACK_HEADER),
                "content_type": request.headers.get("Content-Type"),
                "body": await request.read(),
            }
        )
        status, text = self.script[min(len(self.requests), len(self.script)) - 1]
        return web.Response(status=status, text=text, content_type="application/json")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    fake = Api()
    app = web.Application()
    app.router.add_post("/api/relay/callback", fake.handle)
    async with local_server(app) as fake.base:
        yield fake


def make_client(base: str, **kw: Any) -> CallbackClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return CallbackClient(base, KEY, **kw)


def body(**fields: Any) -> CallbackRequest:
    return CallbackRequest.model_validate({"task_id": "t_unit", "child_id": "w1"} | fields)


async def send(api: Api, request: CallbackRequest | None = None, **kw: Any) -> bool:
    client = make_client(api.base, **kw)
    try:
        return await client.send(request or body())
    finally:
        await client.close()


def test_delays_double_from_the_backoff() -> None:
    assert make_client("http://x", attempts=4, backoff=0.5).delays() == [0.5, 1.0, 2.0, 4.0]
    assert make_client("http://x", attempts=3, backoff=1.0).delays() == [1.0, 2.0, 4.0]  # seed


def test_a_single_attempt_waits_once_before_giving_up() -> None:
    assert make_client("http://x", attempts=1, backoff=2.0).delays() == [2.0]


def test_url_is_the_callback_path_under_the_base() -> None:
    assert make_client("http://h:1/").url == "http://h:1/api/relay/callback"
    assert make_client("http://h:1").url == "http://h:1/api/relay/callback"


async def test_first_2xx_returns_false_after_one_request(api: Api) -> None:
    assert await send(api) is False
    assert len(api.requests) == 1


async def test_the_request_carries_key_json_and_body(api: Api) -> None:
    await send(api, body(result={"score": 0.85}))
    (request,) = api.requests
    assert request["method"] == "POST"
    assert request["path"] == "/api/relay/callback"
    assert request["key"] == KEY
    assert request["content_type"] == "application/json"
    assert json.loads(request["body"]) == {
        "task_id": "t_unit",
        "child_id": "w1",
        "status": "done",
        "result": {"score": 0.85},
    }


async def test_failed_outcome_is_sent_with_its_error(api: Api) -> None:
    await send(api, body(status="failed", error="KeyError: 'x'"))
    sent = json.loads(api.requests[0]["body"])
    assert sent["status"] == "failed"
    assert sent["error"] == "KeyError: 'x'"


async def test_duplicate_answer_returns_true(api: Api) -> None:
    api.script = [(200, '{"status":"ok","duplicate":true}')]
    assert await send(api) is True


@pytest.mark.parametrize("text", ["", "not json", '{"status":"weird"}', "[]"])
async def test_2xx_with_an_unexpected_body_is_not_a_duplicate(api: Api, text: str) -> None:
    api.script = [(200, text)]
    assert await send(api) is False


async def test_other_2xx_statuses_count_as_success(api: Api) -> None:
    api.script = [(202, '{"status":"ok"}')]
    assert await send(api) is False


async def test_500_twice_then_200_succeeds_on_the_third_attempt(api: Api) -> None:
    api.script = [(500, "boom"), (500, "boom"), OK]
    assert await send(api, attempts=3) is False
    assert len(api.requests) == 3
    assert all(r["key"] == KEY for r in api.requests)
    assert len({r["body"] for r in api.requests}) == 1


async def test_always_500_raises_after_exactly_attempts_requests(api: Api) -> None:
    api.script = [(500, '{"status":"error","msg":"internal error"}')]
    with pytest.raises(CallbackFailed, match=r"failed 4 times: HTTP 500"):
        await send(api, attempts=4)
    assert len(api.requests) == 4


async def test_a_single_attempt_is_not_retried(api: Api) -> None:
    api.script = [(503, "down")]
    with pytest.raises(CallbackFailed):
        await send(api, attempts=1)
    assert len(api.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 409, 413, 422])
async def test_other_4xx_is_refused_after_one_request(api: Api, status: int) -> None:
    api.script = [(status, '{"status":"error","msg":"no"}'), OK]
    with pytest.raises(CallbackRefused, match=f"HTTP {status}"):
        await send(api, attempts=3)
    assert len(api.requests) == 1


@pytest.mark.parametrize("status", [408, 429])
async def test_timeout_and_too_many_requests_are_retried(api: Api, status: int) -> None:
    api.script = [(status, "later"), OK]
    assert await send(api, attempts=3) is False
    assert len(api.requests) == 2


async def test_404_raises_unknown_task_after_one_request(api: Api) -> None:
    api.script = [(404, '{"status":"error","msg":"task not found"}'), OK]
    with pytest.raises(UnknownTask, match="t_unit"):
        await send(api, attempts=3)
    assert len(api.requests) == 1


async def test_404_after_a_500_stops_retrying(api: Api) -> None:
    api.script = [(500, "boom"), (404, "nope"), OK]
    with pytest.raises(UnknownTask):
        await send(api, attempts=5)
    assert len(api.requests) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_is_retried_then_callback_failed() -> None:
    client = make_client(f"http://127.0.0.1:{_closed_port()}", attempts=3)
    try:
        with pytest.raises(CallbackFailed, match="failed 3 times"):
            await client.send(body())
    finally:
        await client.close()


async def test_the_wait_follows_every_failure_the_last_one_included() -> None:
    # The seed's rule: a task whose callback failed goes back to the queue no sooner than the
    # wait after its last attempt. Waits are 0.05, 0.1 and 0.2 s plus jitter; a refused
    # connection fails at once, so the waits are the time taken (a sleep never ends early).
    client = make_client(f"http://127.0.0.1:{_closed_port()}", attempts=3, backoff=0.05)
    started = time.monotonic()
    try:
        with pytest.raises(CallbackFailed):
            await client.send(body())
    finally:
        await client.close()
    assert client.delays() == [0.05, 0.1, 0.2]
    assert time.monotonic() - started >= 0.35


async def test_a_given_session_is_used(api: Api) -> None:
    through: list[str] = []

    async def on_request_start(
        session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        through.append(f"{params.method} {params.url}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = make_client(api.base, session=session)
        assert await client.send(body()) is False
        assert through == [f"POST {api.base}/api/relay/callback"]  # through the given session
        assert not session.closed


async def test_the_client_reopens_a_closed_session(api: Api) -> None:
    client = make_client(api.base)
    try:
        assert await client.send(body()) is False
        await client.close()
        assert await client.send(body()) is False
    finally:
        await client.close()
    assert len(api.requests) == 2


async def test_close_without_any_request_is_fine() -> None:
    await make_client("http://127.0.0.1:1").close()


async def test_first_is_said_on_the_first_try_only(api: Api) -> None:
    api.script = [(503, '{"status":"error","msg":"down"}'), OK]
    client = CallbackClient(api.base, KEY, attempts=3, backoff=0)
    try:
        await client.send(CallbackRequest(task_id="t_1"), first=True)
        await client.send(CallbackRequest(task_id="t_2"))
    finally:
        await client.close()
    assert [r["first"] for r in api.requests] == ["1", None, None]


def test_the_child_closes_idle_connections_before_the_api_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other way round, a callback reusing a connection the API is closing fails ("Can not
    # write request body") and waits a second for its retry: about 1 in 200 with thousands of
    # handlers at once and uvicorn's default 5 s.
    import argparse

    import uvicorn

    from cli.services import cmd_api

    served: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.append(server.config))
    monkeypatch.setenv("RELAY_DEV_MODE", "true")
    cmd_api(argparse.Namespace(host=None, port=None))
    assert served[0].timeout_keep_alive == API_IDLE_CONNECTION_SECONDS
    assert IDLE_CONNECTION_SECONDS < API_IDLE_CONNECTION_SECONDS
