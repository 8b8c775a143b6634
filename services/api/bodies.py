"""Request bodies, before any endpoint: their size bounded, and JSON whatever their Content-Type."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response

# The seed's own curl examples post JSON with curl's default form content type.
_TREATED_AS_JSON = {b"", b"application/x-www-form-urlencoded", b"text/plain"}
_WITH_BODY = ("POST", "PUT", "PATCH")
#: A refused body is still read, and dropped, up to this much of it and this long, before the
#: 413 is sent (as nginx's lingering close does). A client that writes its whole body before
#: it reads the answer (Python's urllib and requests do) would otherwise find the connection
#: closed under it with its data unread, which the kernel answers with a reset: it would see
#: "connection reset", never the 413.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0


class BodySizeLimit:
    """Reads a body whole before the app: 413 past `max_body` bytes, counted as it streams,
    whatever Content-Length says (the rest of the body read and dropped first, within bounds)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        drain_bytes: int = DRAIN_BYTES,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._refuse(scope, receive, send, more=True)
                return
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            more = message.get("more_body", False)
            if received > self.max_body:
                await self._refuse(scope, receive, send, more=more)
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, more: bool) -> None:
        """413, once the rest of the body is read and dropped; past the drain's bounds, with
        `Connection: close` (the server closes it after the answer)."""
        drained = await self._drain(receive) if more else True
        if drained is None:  # the client went away
            return
        headers = None if drained else {"Connection": "close"}
        response = error_response(
            413, f"request body larger than {self.max_body} bytes", headers=headers
        )
        await response(scope, receive, send)

    async def _drain(self, receive: Receive) -> bool | None:
        """Read the body's rest and drop it: True once all read, False past the bounds, None if
        the client left."""
        dropped = 0
        try:
            async with asyncio.timeout(self.drain_seconds):
                while dropped <= self.drain_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            pass
        return False


class JsonContentType:
    """A body sent without a Content-Type, as a form or as text is read as JSON (FastAPI reads
    a body model only from JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _WITH_BODY and not _json(scope):
            headers = []
            for name, value in scope["headers"]:
                kind = value.split(b";")[0].strip().lower()
                json_anyway = name == b"content-type" and kind in _TREATED_AS_JSON
                headers.append((name, b"application/json" if json_anyway else value))
            if not any(name == b"content-type" for name, _ in headers):
                headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _json(scope: Scope) -> bool:
    """Whether the request says its body is JSON (then nothing is rewritten: most requests)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"application/json")
    return False
