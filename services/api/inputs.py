"""The inputs of the hot endpoints (send, callback), read by hand.

FastAPI's dependency solving was a fifth of the API's time per request. These endpoints take
the bare Request and read the key, headers and body here, with the same models and the same
errors: a failure is raised as the RequestValidationError FastAPI would have raised, so the one
handler in errors.py words it. Their OpenAPI description is given by `documented`.
"""

from __future__ import annotations

import codecs
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.api.auth import Principal
from services.api.deps import KEY_HEADER, authorized

M = TypeVar("M", bound=BaseModel)


def caller(request: Request, *scopes: str) -> Principal:
    """The key's holder, if it has one of `scopes` (else 401, 403 or 429)."""
    return authorized(request, request.headers.get(KEY_HEADER), *scopes)


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


def documented(
    model: type[BaseModel], headers: dict[str, tuple[str, str | None]] | None = None
) -> dict[str, Any]:
    """The OpenAPI of a hand-read body, and of optional headers: name → (description, pattern)."""
    doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema(by_alias=True)}},
        }
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
