"""services/api/hot.py: the hot lane serves its POSTs, answers failures as the app would, and
passes everything else to FastAPI."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request, Response

from services.api import errors
from services.api.errors import ApiError
from services.api.hot import HotLane
from shared.errors import BrokerUnavailable


async def ok(request: Request) -> Response:
    assert request.app.state.marker == "the app's state"
    return Response(await request.body(), media_type="application/json")


async def refused(request: Request) -> Response:
    raise ApiError(403, "Forbidden: no")


async def broker_down(request: Request) -> Response:
    raise BrokerUnavailable("gone")


async def broken(request: Request) -> Response:
    raise RuntimeError("bug")


def call(method: str, path: str, body: bytes = b"") -> httpx.Response:
    app = FastAPI()
    errors.install(app)
    app.state.marker = "the app's state"

    @app.get("/api/relay/send")
    async def through_fastapi() -> dict[str, str]:
        return {"served_by": "fastapi"}

    lane = HotLane(
        app,
        {"/ok": ok, "/refused": refused, "/down": broker_down, "/broken": broken,
         "/api/relay/send": ok},
    )  # fmt: skip

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=lane)
        async with httpx.AsyncClient(transport=transport, base_url="http://lane") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(run())


def test_the_lane_serves_its_posts() -> None:
    answer = call("POST", "/ok", b'{"a": 1}')
    assert answer.status_code == 200 and answer.json() == {"a": 1}


def test_failures_get_the_contracts_answers() -> None:
    assert call("POST", "/refused").json() == {"status": "error", "msg": "Forbidden: no"}
    down = call("POST", "/down")
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    broken = call("POST", "/broken")
    assert broken.status_code == 500 and broken.json()["msg"] == "internal error"


def test_other_methods_and_paths_go_to_fastapi() -> None:
    assert call("GET", "/api/relay/send").json() == {"served_by": "fastapi"}
    missing = call("POST", "/nowhere")
    assert missing.status_code == 404 and missing.json()["status"] == "error"
