"""Every error the API answers, in the contract's shape: {"status":"error","msg":…}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.contract import MAX_LIMIT
from shared.errors import BrokerUnavailable, DatabaseUnavailable, PublishRefused

log = logging.getLogger(__name__)

UNAUTHORIZED = "Unauthorized: Invalid or missing API key"


class ApiError(Exception):
    """An HTTP error with the contract's body."""

    def __init__(self, status_code: int, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status_code = status_code
        self.msg = msg
        self.headers = headers


def error_response(
    status_code: int,
    msg: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "msg": msg}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status_code, headers=headers)


#: Fields whose absence the seed answers with its own message.
_REQUIRED_MESSAGES = {
    "from": "missing from/to",
    "to": "missing from/to",
    "task_id": "missing task_id",
}
#: Query parameters the contract words itself, whatever is wrong with them (missing, not an
#: integer, out of range…): the OpenAPI states their bounds, these messages say them in words.
_QUERY_MESSAGES = {
    "limit": f"limit must be an integer from 1 to {MAX_LIMIT}",
    "confirm": "purging drops parked tasks for good: repeat with confirm=true",
}


def _describe(errors: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    """Status, message and per-field errors for a request that failed validation."""
    clean = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        for e in errors
    ]
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            return 400, "request body is not valid JSON", clean
        if loc == ("body",) and e.get("type") == "missing":
            return 400, "request body is missing", clean
        missing_field = e.get("type") == "missing" and len(loc) == 2 and loc[0] == "body"
        if missing_field and str(loc[1]) in _REQUIRED_MESSAGES:
            return 400, _REQUIRED_MESSAGES[str(loc[1])], clean
        if len(loc) == 2 and loc[0] == "query" and str(loc[1]) in _QUERY_MESSAGES:
            return 400, _QUERY_MESSAGES[str(loc[1])], clean
    place = [str(p) for p in errors[0].get("loc", ())] or ["body"]
    where = ".".join(place[1:]) or place[0]
    msg = str(errors[0].get("msg", "invalid"))
    if place[0] in ("query", "path", "header"):
        return 400, f"invalid {place[0]} parameter {where}: {msg}", clean
    return 422, f"invalid request: {where}: {msg}", clean


def response_for(exc: Exception) -> JSONResponse:
    """The contract's answer to a failure raised while serving a request."""
    if isinstance(exc, RequestValidationError):
        status, msg, errors = _describe(list(exc.errors()))
        return error_response(status, msg, errors)
    status, msg, headers = refusal_of(exc)
    return error_response(status, msg, headers=headers)


def refusal_of(exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    """Status, message and headers of the answer to a failure (but a body's validation)."""
    if isinstance(exc, ApiError):
        return exc.status_code, exc.msg, exc.headers
    if isinstance(exc, StarletteHTTPException):
        msg = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return exc.status_code, msg, getattr(exc, "headers", None)
    if isinstance(exc, BrokerUnavailable):
        log.warning("503: %s", exc)
        msg = "message bus unavailable: RabbitMQ did not confirm, nothing was sent"
        return 503, msg, {"Retry-After": "1"}
    if isinstance(exc, PublishRefused):
        log.error("503: %s", exc)
        return 503, "message bus refused the message, nothing was sent", None
    if isinstance(exc, DatabaseUnavailable):
        log.warning("503: %s", exc)
        return 503, "database unavailable", {"Retry-After": "1"}
    log.error("unexpected error", exc_info=exc)
    return 500, "internal error", None


def allowed_methods(request: Request) -> set[str]:
    """The `Allow` of a 405: every method a route serves at the request's path.

    Starlette's router answers 405 with the methods of the first route whose path matched, and
    each method of a path is a route of its own: OPTIONS /dlq named GET and left out DELETE.
    """
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods or set()
    return methods


def install(app: FastAPI) -> None:
    """Register `response_for` for every failure, so each gets the contract's error body."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        is_405 = isinstance(exc, StarletteHTTPException) and exc.status_code == 405
        if is_405 and (methods := allowed_methods(request)):
            exc = StarletteHTTPException(405, headers={"Allow": ", ".join(sorted(methods))})
        return response_for(exc)

    for kind in (
        ApiError,
        RequestValidationError,
        StarletteHTTPException,
        BrokerUnavailable,
        PublishRefused,
        DatabaseUnavailable,
        Exception,
    ):
        app.add_exception_handler(kind, handle)
