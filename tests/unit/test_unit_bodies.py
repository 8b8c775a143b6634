"""services/api/bodies.py: the body size limit and JSON by default, as ASGI driven by hand."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from services.api.bodies import BodySizeLimit, JsonContentType

MAX = 100


def guard(app: Any, max_body: int) -> BodySizeLimit:
    """Both, in the order the app adds them: the size first, then the Content-Type."""
    return BodySizeLimit(JsonContentType(app), max_body=max_body)


@dataclass
class Inner:
    """A tiny ASGI app that records what it got and answers 200 with the body it read."""

    calls: int = 0
    scope: Scope | None = None
    body: bytes = b""
    after_body: list[Message] = field(default_factory=list)
    read_twice: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.scope = scope
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            more = True
            while more:
                message = await receive()
                self.body += message.get("body", b"")
                more = message.get("more_body", False)
            if self.read_twice:
                self.after_body.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner:" + self.body})


class Client:
    """Feeds request messages to the app and collects what it sends."""

    def __init__(self, chunks: list[bytes], *, then: list[Message] | None = None) -> None:
        self.messages: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        self.messages += then or [{"type": "http.disconnect"}]
        self.received = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.received += 1
        return self.messages.pop(0)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def http_scope(
    method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/api/relay/send",
        "raw_path": b"/api/relay/send",
        "query_string": b"",
        "root_path": "",
        "headers": headers if headers is not None else [],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8008),
    }


async def run(
    scope: dict[str, Any], chunks: list[bytes], inner: Inner | None = None, **kw: Any
) -> tuple[Inner, Client]:
    inner = inner or Inner()
    client = Client(chunks, **kw)
    await guard(inner, max_body=MAX)(scope, client.receive, client.send)
    return inner, client


def assert_413(client: Client) -> None:
    assert client.status == 413
    assert client.headers[b"content-type"] == b"application/json"
    assert json.loads(client.body) == {
        "status": "error",
        "msg": f"request body larger than {MAX} bytes",
    }


async def test_honest_content_length_over_max_is_413_once_the_body_is_read_and_dropped() -> None:
    # Read, not answered at once: a client writing its whole body before it reads would find
    # the connection reset under it (its data unread) instead of the 413.
    headers = [(b"content-type", b"application/json"), (b"content-length", b"101")]
    inner, client = await run(http_scope(headers=headers), [b"x" * 50, b"x" * 51])
    assert_413(client)
    assert inner.calls == 0
    assert client.received == 2
    assert b"connection" not in client.headers  # all read: the connection may serve again


async def test_a_refused_body_is_dropped_only_within_bounds_then_the_connection_closes() -> None:
    chunks = [b"x" * 60] * 10  # 600 bytes, over MAX and over what the guard drops
    client = Client(chunks)
    guarded = BodySizeLimit(Inner(), max_body=MAX, drain_bytes=200)
    await guarded(http_scope(), client.receive, client.send)
    assert_413(client)
    assert client.headers[b"connection"] == b"close"
    assert client.received < len(chunks)


async def test_a_refused_body_that_never_ends_is_answered_after_the_drains_time() -> None:
    async def slow_receive() -> Message:
        await asyncio.sleep(0.01)
        return {"type": "http.request", "body": b"x" * 60, "more_body": True}

    client = Client([])
    guarded = BodySizeLimit(Inner(), max_body=MAX, drain_seconds=0.1)
    await guarded(http_scope(), slow_receive, client.send)
    assert_413(client)
    assert client.headers[b"connection"] == b"close"


async def test_a_client_leaving_while_its_refused_body_drains_gets_nothing() -> None:
    client = Client([b"x" * 101], then=[])
    client.messages[0]["more_body"] = True
    client.messages.append({"type": "http.disconnect"})
    await guard(Inner(), max_body=MAX)(http_scope(), client.receive, client.send)
    assert client.sent == []


async def test_body_over_max_streamed_with_a_lying_content_length_is_413() -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"10")]
    inner, client = await run(http_scope(headers=headers), [b"a" * 40] * 3)
    assert_413(client)
    assert inner.calls == 0


async def test_body_over_max_streamed_without_content_length_is_413() -> None:
    inner, client = await run(http_scope(), [b"a" * 60, b"b" * 41])
    assert_413(client)
    assert inner.calls == 0


async def test_body_of_exactly_max_passes() -> None:
    body = b"x" * MAX
    headers = [(b"content-length", str(MAX).encode())]
    inner, client = await run(http_scope(headers=headers), [body])
    assert client.status == 200
    assert inner.body == body


async def test_body_under_max_reaches_the_inner_app_intact() -> None:
    chunks = [b'{"from": "master", ', b'"to": "child", ', b'"text": "\xe4\xbd\xa0"}']
    length = str(sum(map(len, chunks))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    inner, client = await run(http_scope(headers=headers), chunks)
    assert inner.calls == 1
    assert inner.body == b"".join(chunks)
    assert client.status == 200
    assert client.body == b"inner:" + inner.body


async def test_empty_body_reaches_the_inner_app() -> None:
    inner, client = await run(http_scope(), [b""])
    assert inner.calls == 1
    assert inner.body == b""
    assert client.status == 200


async def test_after_the_replayed_body_the_app_sees_the_real_receive() -> None:
    inner = Inner(read_twice=True)
    inner, _ = await run(http_scope(), [b"{}"], inner=inner)
    assert inner.after_body == [{"type": "http.disconnect"}]


async def test_client_leaving_mid_body_calls_nothing_and_answers_nothing() -> None:
    client = Client([])
    client.messages = [
        {"type": "http.request", "body": b"a", "more_body": True},
        {"type": "http.disconnect"},
    ]
    inner = Inner()
    await guard(inner, max_body=MAX)(http_scope(), client.receive, client.send)
    assert inner.calls == 0
    assert client.sent == []


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/x-www-form-urlencoded",
        b"application/x-www-form-urlencoded; charset=utf-8",
        b"Application/X-WWW-Form-Urlencoded",
        b"text/plain",
        b"",
    ],
)
async def test_form_and_plain_content_types_become_json(content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"x-relay-api-key", b"k")]
    inner, _ = await run(http_scope(headers=headers), [b"{}"])
    assert inner.scope is not None
    assert inner.scope["headers"] == [
        (b"content-type", b"application/json"),
        (b"x-relay-api-key", b"k"),
    ]


async def test_absent_content_type_becomes_json() -> None:
    headers = [(b"x-relay-api-key", b"k")]
    inner, _ = await run(http_scope(headers=headers), [b"{}"])
    assert inner.scope is not None
    assert inner.scope["headers"] == [
        (b"x-relay-api-key", b"k"),
        (b"content-type", b"application/json"),
    ]


@pytest.mark.parametrize(
    "content_type",
    [b"application/json", b"application/json; charset=utf-8", b"multipart/form-data"],
)
async def test_other_content_types_are_kept(content_type: bytes) -> None:
    inner, _ = await run(http_scope(headers=[(b"content-type", content_type)]), [b"{}"])
    assert inner.scope is not None
    assert inner.scope["headers"] == [(b"content-type", content_type)]


async def test_the_callers_scope_is_not_mutated() -> None:
    headers = [(b"content-type", b"text/plain")]
    scope = http_scope(headers=headers)
    await run(scope, [b"{}"])
    assert scope["headers"] == [(b"content-type", b"text/plain")]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_put_and_patch_are_guarded_too(method: str) -> None:
    inner, client = await run(http_scope(method=method), [b"x" * (MAX + 1)])
    assert_413(client)
    assert inner.calls == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
async def test_other_methods_pass_untouched(method: str) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"999999")]
    scope = http_scope(method=method, headers=headers)
    client = Client([b""])
    inner = Inner()
    await guard(inner, max_body=MAX)(scope, client.receive, client.send)
    assert inner.calls == 1
    assert inner.scope is scope
    assert client.status == 200


async def test_non_http_scopes_pass_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        raise AssertionError("the guard must not read a lifespan scope")

    async def send(message: Message) -> None:
        raise AssertionError("the guard must not answer a lifespan scope")

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await guard(app, max_body=MAX)(scope, receive, send)
    assert seen == [scope]
