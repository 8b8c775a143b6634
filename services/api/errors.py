"""Every error the API answers, in the contract's shape: {"status":"error","msg":…}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    place = [str(p) for p in errors[0].get("loc", ())] or ["body"]
    where = ".".join(place[1:]) or place[0]
    msg = str(errors[0].get("msg", "invalid"))
    if place[0] in ("query", "path", "header"):
        return 400, f"invalid {place[0]} parameter {where}: {msg}", clean
    return 422, f"invalid request: {where}: {msg}", clean


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the contract's error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.msg, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, msg, errors = _describe(list(exc.errors()))
        return error_response(status, msg, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        log.warning("503: %s", exc)
        return error_response(
            503,
            "message bus unavailable: RabbitMQ did not confirm, nothing was sent",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(PublishRefused)
    async def _refused(_: Request, exc: PublishRefused) -> JSONResponse:
        log.error("503: %s", exc)
        return error_response(503, "message bus refused the message, nothing was sent")

    @app.exception_handler(DatabaseUnavailable)
    async def _database(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.warning("503: %s", exc)
        return error_response(503, "database unavailable", headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal error")
