"""Request bodies, before any endpoint: their size bounded, and JSON whatever their Content-Type."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response

# The seed's own curl examples post JSON with curl's default form content type.
_TREATED_AS_JSON = {b"", b"application/x-www-form-urlencoded", b"text/plain"}
_WITH_BODY = ("POST", "PUT", "PATCH")


class BodySizeLimit:
    """Reads a body whole before the app: 413 past `max_body` bytes, counted as it streams,
    whatever Content-Length says."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._refuse(scope, receive, send)
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
            if received > self.max_body:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body larger than {self.max_body} bytes")
        await response(scope, receive, send)


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
