"""The hot lane: sends and callbacks served straight from ASGI, in front of FastAPI.

Two requests a task take these endpoints. Through FastAPI they paid for its middleware stack,
routing over every route and its request handler, a quarter of the API's time; here they get
the same endpoint functions (services/api/routes.py, which read their own input), the same
errors (errors.response_for) and nothing else. FastAPI still describes them in its OpenAPI and
serves every other path and method.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from services.api.errors import response_for

Endpoint = Callable[[Request], Awaitable[Response]]


class HotLane:
    """Serves `POST` to the `endpoints`' paths itself; passes everything else to `app`."""

    def __init__(self, app: FastAPI, endpoints: dict[str, Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what Starlette sets: request.app.state holds the services
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = response_for(exc)
        await response(scope, receive, send)
