"""One path per request: every operation the OpenAPI documents is served by the FastAPI route
that documents it, through the app's middleware; the hand-read routes take no dependencies."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import FastAPIError
from fastapi.routing import APIRoute, APIRouter, iter_route_contexts
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api import errors
from services.api.app import create_app
from services.api.auth import KeyRing
from services.api.deps import Services
from services.api.errors import ApiError
from services.api.hand_read import HandReadRoute, build_handlers, mount_first
from services.api.limits import Limiter, RateLimits
from shared.errors import BrokerUnavailable, DatabaseUnavailable
from shared.settings import ApiSettings

KEY = "k" * 32
#: Served, and on purpose not in the OpenAPI: operations' probes and FastAPI's own pages.
UNDOCUMENTED = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                "/openapi.json", "/ui", "/ui/", "/ui/{name}"}  # fmt: skip


class Unreachable:
    """Stands for the broker, the read model and the send keys: the database is down."""

    def __getattr__(self, name: str) -> Any:
        async def down(*args: Any, **kwargs: Any) -> Any:
            raise DatabaseUnavailable("down")

        return down


class Seen:
    """A middleware added the way any future one would be: marks every answer it passed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def marking(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, marking)


def bus_app() -> FastAPI:
    settings = ApiSettings(api_key=KEY, auth_failure_rate=0)
    app = create_app(settings)
    app.state.services = Services(
        settings=settings,
        keys=KeyRing.from_settings(settings),
        limits=RateLimits(Limiter(0, 1), Limiter(0, 1), Limiter(0, 1)),
        broker=cast(Any, Unreachable()),
        reader=cast(Any, Unreachable()),
        commits=cast(Any, Unreachable()),
        send_keys=cast(Any, Unreachable()),
        cancels=cast(Any, Unreachable()),
        answers=cast(Any, Unreachable()),
        inbox_cursors=cast(Any, Unreachable()),
        ids=cast(Any, Unreachable()),
        queue_depths=cast(Any, Unreachable()),
    )
    return app


def documented(app: FastAPI) -> set[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return {(path, method.upper()) for path, item in paths.items() for method in item}


def served(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every route the app routes to, its included routers' too."""
    pairs = set()
    for route in iter_route_contexts(app.routes):
        assert isinstance(route.original_route, Route), f"{route!r}: what serves it?"
        path = route.path_format  # without a parameter's convertor, as the OpenAPI names it
        assert path is not None
        pairs |= {(path, m) for m in route.methods or ()} - {(path, "HEAD")}
    return pairs


def request(app: ASGIApp, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def test_the_openapi_documents_every_route_served_and_nothing_else() -> None:
    app = bus_app()
    undocumented = {(p, m) for p, m in served(app) if p in UNDOCUMENTED}
    assert documented(app) == served(app) - undocumented
    assert ("/api/relay/send", "POST") in documented(app)
    assert ("/api/relay/callback", "POST") in documented(app)


def test_every_documented_operation_goes_through_the_apps_middleware() -> None:
    app = bus_app()
    app.add_middleware(Seen)
    for path, method in sorted(documented(app)):
        concrete = re.sub(r"\{[^}]+\}", "t_x", path)
        answer = request(app, method, concrete, json={})
        assert answer.headers.get("x-seen") == "1", f"{method} {path} bypassed the middleware"
        assert answer.json()["status"] == "error", (method, path, answer.text)


def test_send_and_callback_refuse_a_missing_key_in_the_contracts_words() -> None:
    app = bus_app()
    for path in ("/api/relay/send", "/api/relay/callback"):
        answer = request(app, "POST", path, json={})
        assert answer.status_code == 401
        assert answer.json() == {"status": "error", "msg": errors.UNAUTHORIZED}


def _hand_read_app(endpoint: Any, **route: Any) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    router = APIRouter(route_class=HandReadRoute)
    router.add_api_route("/x", endpoint, methods=["POST"], **route)
    app.include_router(router)
    return app


async def refused(request: Request) -> Response:
    raise ApiError(403, "Forbidden: no")


async def broker_down(request: Request) -> Response:
    raise BrokerUnavailable("gone")


async def broken(request: Request) -> Response:
    raise RuntimeError("bug")


def test_a_hand_read_endpoints_failures_get_the_contracts_answers() -> None:
    no = request(_hand_read_app(refused), "POST", "/x")
    assert (no.status_code, no.json()) == (403, {"status": "error", "msg": "Forbidden: no"})
    down = request(_hand_read_app(broker_down), "POST", "/x")
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    bug = request(_hand_read_app(broken), "POST", "/x")
    assert (bug.status_code, bug.json()["msg"]) == (500, "internal error")


def _included(**inclusion: Any) -> FastAPI:
    """A hand-read route included with `inclusion`, the app built as create_app builds it."""
    router = APIRouter(route_class=HandReadRoute)
    router.add_api_route("/x", refused, methods=["POST"])
    app = FastAPI()
    app.include_router(router, **inclusion)
    build_handlers(app)
    return app


def _mounted(app: FastAPI) -> FastAPI:
    """A hand-read route mounted first in `app`, as create_app mounts send and callback."""
    router = APIRouter(route_class=HandReadRoute)
    router.add_api_route("/x", refused, methods=["POST"])
    mount_first(app, router)
    return app


async def needs(request: Request) -> None:
    raise AssertionError("a hand-read route never solves dependencies")


async def with_query(request: Request, limit: int = 1) -> Response:
    return Response()


@pytest.mark.parametrize(
    "build",
    [
        lambda: _hand_read_app(refused, dependencies=[Depends(needs)]),
        lambda: _hand_read_app(with_query),
        lambda: _included(dependencies=[Depends(needs)]),
        lambda: _mounted(FastAPI(dependencies=[Depends(needs)])),
    ],
    ids=["on the route", "a parameter", "on its inclusion", "on the app"],
)
def test_a_dependency_a_hand_read_route_would_skip_is_refused_when_the_app_is_built(
    build: Any,
) -> None:
    with pytest.raises(FastAPIError, match="reads its own request"):
        build()


def test_the_hand_read_routes_are_api_routes_fastapi_documents() -> None:
    app = bus_app()
    hand_read = [
        r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, HandReadRoute)
    ]
    assert {(r.path, *sorted(r.methods or ())) for r in hand_read} == {
        ("/api/relay/send", "POST"),
        ("/api/relay/callback", "POST"),
        ("/api/relay/callbacks", "POST"),
    }
    assert all(isinstance(r.original_route, APIRoute) and r.include_in_schema for r in hand_read)


def test_a_405_allows_every_method_the_openapi_documents_at_its_path() -> None:
    app = bus_app()
    for path, operations in app.openapi()["paths"].items():
        answer = request(app, "OPTIONS", re.sub(r"\{[^}]+\}", "t_x", path))
        assert answer.status_code == 405, path
        assert answer.headers["allow"] == ", ".join(sorted(m.upper() for m in operations)), path


def test_the_replay_of_all_is_no_parked_tasks_path() -> None:
    # OpenAPI matches /dlq/replay before /dlq/{task_id}: it has no GET, so the API answers 405.
    answer = request(bus_app(), "GET", "/api/relay/dlq/replay", headers={"X-Relay-API-Key": KEY})
    assert (answer.status_code, answer.headers["allow"]) == (405, "POST")


@pytest.mark.parametrize("query", ["", "?confirm=false", "?confirm=maybe"])
def test_a_purge_needs_confirm_true_as_the_openapi_says(query: str) -> None:
    app = bus_app()
    answer = request(app, "DELETE", f"/api/relay/dlq{query}", headers={"X-Relay-API-Key": KEY})
    assert answer.status_code == 400
    assert answer.json()["msg"] == "purging drops parked tasks for good: repeat with confirm=true"
    purge = app.openapi()["paths"]["/api/relay/dlq"]["delete"]["parameters"]
    confirm = next(p for p in purge if p["name"] == "confirm")
    assert confirm["required"] is True and confirm["schema"]["const"] is True


def test_the_hand_read_bodies_refer_to_schemas_in_the_openapi() -> None:
    document = json.dumps(bus_app().openapi())
    components = bus_app().openapi()["components"]["schemas"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', document):
        assert ref in components
    assert "$defs" not in document  # it would point at the document's root
