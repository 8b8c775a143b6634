"""Endpoints that read their own request: the route class, and the readers of key, header, body.

The requests every task makes: `send`, and `callback` or `callbacks`. FastAPI's dependency
solving was a fifth of the API's time on them, so their endpoints take the bare Request and read
the key, headers and body here, with the same models and the same errors: a failure is raised as
the RequestValidationError FastAPI would have raised, so errors.py words it. They are FastAPI
routes all the same (one path per request): every middleware and exception handler runs for
them, and the OpenAPI describes them from `documented`.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import FastAPIError, RequestValidationError
from fastapi.routing import APIRoute, _effective_route_context_var, iter_route_contexts
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.api.auth import Principal
from services.api.deps import authorized
from shared.contract import API_KEY_HEADER

M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class HandReadRoute(APIRoute):
    """A route whose endpoint reads its request itself and returns its Response.

    FastAPI serves it with its middleware, routing and exception handlers; only the per-request
    dependency solving is left out. A dependency or a parameter would therefore never run: one
    declared on the route, its router or its inclusion is refused when the app is built
    (`build_handlers`).
    """

    def get_route_handler(self) -> Endpoint:
        # FastAPI builds the handler of an included route with its inclusion's dependencies in
        # this context; those are checked too. (A private name of FastAPI 0.165, pinned: the
        # inclusion case of tests/unit/test_unit_one_path.py fails if it changes.)
        context = _effective_route_context_var.get()
        dependant = (
            context.dependant
            if context is not None and context.original_route is self
            else self.dependant
        )
        declared = [
            *dependant.dependencies,
            *dependant.path_params,
            *dependant.query_params,
            *dependant.header_params,
            *dependant.cookie_params,
            *dependant.body_params,
        ]
        if declared:
            raise FastAPIError(
                f"{self.path} reads its own request: it takes no dependencies or parameters, "
                f"only the Request (found {declared!r:.200})"
            )
        return cast(Endpoint, self.endpoint)


def mount_first(app: FastAPI, router: APIRouter) -> None:
    """Serve `router`'s routes before any other route of `app`, as routes of its own.

    The two requests every task makes are then matched first, and without the second match an
    included router costs (FastAPI matches an inclusion, then the route in it: 30 µs a request).
    Dependencies of the app would not reach them: refused here, as on the routes themselves.
    """
    if app.router.dependencies or router.dependencies:
        raise FastAPIError("a hand-read route reads its own request: no dependencies of the app")
    app.router.routes[:0] = router.routes


def build_handlers(app: FastAPI) -> None:
    """Build every route's handler now (FastAPI builds an included router's lazily): a
    hand-read route refuses what it would skip when the app is made, not at its first request."""
    for _ in iter_route_contexts(app.routes):
        pass


def add_components(app: FastAPI) -> None:
    """Add the schemas the hand-read bodies refer to (`documented`) to the app's OpenAPI."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # made once, then FastAPI's cached copy: the update is idempotent
        schema.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's way to extend its OpenAPI


async def caller(request: Request, *scopes: str) -> Principal:
    """The key's holder, if it has one of `scopes` (else 401, 403 or 429)."""
    return await authorized(request, request.headers.get(API_KEY_HEADER), *scopes)


def header(request: Request, name: str, adapter: TypeAdapter[str | None]) -> str | None:
    """A header's value, validated by `adapter`; None when absent."""
    try:
        return adapter.validate_python(request.headers.get(name))
    except ValidationError as exc:
        raise RequestValidationError(_located(exc, "header", name)) from exc


async def body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`."""
    raw = (await request.body()).removeprefix(codecs.BOM_UTF8)  # json.loads, FastAPI's, skips it
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(_located(exc, "body")) from exc


def _located(exc: ValidationError, *where: str) -> list[dict[str, Any]]:
    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_url=False)]


#: The schemas the hand-read bodies refer to (a model's `$defs`), for the OpenAPI's components.
_COMPONENTS: dict[str, Any] = {}
_COMPONENT_REF = "#/components/schemas/{model}"


def documented(
    model: type[BaseModel], headers: dict[str, tuple[str, str | None]] | None = None
) -> dict[str, Any]:
    """The OpenAPI of a hand-read body, and of optional headers: name → (description, pattern)."""
    # A schema's `#/$defs/…` would point at the root of the whole OpenAPI document: its
    # definitions go to the components, as FastAPI does with the bodies it reads.
    schema = model.model_json_schema(by_alias=True, ref_template=_COMPONENT_REF)
    _COMPONENTS.update(schema.pop("$defs", {}))
    doc: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }
    if headers:
        doc["parameters"] = [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": text,
                "schema": {"type": "string"} | ({"pattern": pattern} if pattern else {}),
            }
            for name, (text, pattern) in headers.items()
        ]
    return doc
