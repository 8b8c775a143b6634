"""services/api/errors.py: validation errors in the contract's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query

from services.api.errors import UNAUTHORIZED, ApiError, _describe, error_response, install
from shared.errors import BrokerUnavailable, DatabaseUnavailable, PublishRefused
from shared.schemas import CallbackRequest, SendRequest


def err(
    loc: tuple[Any, ...], type_: str, msg: str = "Field required", **more: Any
) -> dict[str, Any]:
    return {"loc": loc, "type": type_, "msg": msg, **more}


# _describe, with errors as FastAPI reports them


def test_invalid_json_is_400() -> None:
    status, msg, _ = _describe([err(("body", 12), "json_invalid", "JSON decode error")])
    assert (status, msg) == (400, "request body is not valid JSON")


def test_invalid_json_wins_over_other_errors() -> None:
    errors = [err(("query", "x"), "int_parsing"), err(("body", 3), "json_invalid")]
    assert _describe(errors)[:2] == (400, "request body is not valid JSON")


@pytest.mark.parametrize("field", ["from", "to"])
def test_missing_from_or_to_is_the_seed_message(field: str) -> None:
    status, msg, _ = _describe([err(("body", field), "missing")])
    assert status == 400
    assert msg == "missing from/to"


def test_missing_from_and_to_is_the_seed_message() -> None:
    status, msg, _ = _describe([err(("body", "from"), "missing"), err(("body", "to"), "missing")])
    assert (status, msg) == (400, "missing from/to")


def test_missing_from_after_another_error_still_gets_the_seed_message() -> None:
    errors = [err(("body", "payload"), "dict_type", "Input should be a valid dictionary")]
    errors.append(err(("body", "to"), "missing"))
    assert _describe(errors)[:2] == (400, "missing from/to")


def test_missing_task_id_is_400() -> None:
    assert _describe([err(("body", "task_id"), "missing")])[:2] == (400, "missing task_id")


def test_missing_body_is_400() -> None:
    assert _describe([err(("body",), "missing")])[:2] == (400, "request body is missing")


def test_missing_other_body_field_is_422() -> None:
    status, msg, _ = _describe([err(("body", "status"), "missing")])
    assert status == 422
    assert msg == "invalid request: status: Field required"


def test_nested_missing_from_is_not_the_seed_message() -> None:
    status, _, _ = _describe([err(("body", "payload", "from"), "missing")])
    assert status == 422


@pytest.mark.parametrize("place", ["query", "path", "header"])
def test_query_path_and_header_errors_are_400(place: str) -> None:
    errors = [err((place, "after"), "int_parsing", "Input should be a valid integer")]
    status, msg, _ = _describe(errors)
    assert status == 400
    assert msg == f"invalid {place} parameter after: Input should be a valid integer"


@pytest.mark.parametrize(
    "error",
    [
        err(("query", "limit"), "int_parsing", "Input should be a valid integer"),
        err(("query", "limit"), "less_than_equal", "Input should be less than or equal to 1000"),
        err(("query", "limit"), "greater_than_equal", "Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_limit_is_the_contracts_400(error: dict[str, Any]) -> None:
    assert _describe([error])[:2] == (400, "limit must be an integer from 1 to 1000")


@pytest.mark.parametrize(
    "error", [err(("query", "confirm"), "missing"), err(("query", "confirm"), "literal_error")]
)
def test_a_purge_without_confirm_true_is_the_contracts_400(error: dict[str, Any]) -> None:
    status, msg, _ = _describe([error])
    assert (status, msg) == (400, "purging drops parked tasks for good: repeat with confirm=true")


def test_other_body_errors_are_422() -> None:
    errors = [err(("body", "payload"), "dict_type", "Input should be a valid dictionary")]
    status, msg, _ = _describe(errors)
    assert status == 422
    assert msg == "invalid request: payload: Input should be a valid dictionary"


def test_whole_body_error_names_the_body() -> None:
    errors = [err(("body",), "model_attributes_type", "Input should be a valid dictionary")]
    assert _describe(errors)[1] == "invalid request: body: Input should be a valid dictionary"


def test_errors_list_has_loc_msg_type_only_and_string_locs() -> None:
    errors = [
        err(("body", "payload", 0), "dict_type", "bad", input=[1], ctx={"x": 1}, url="u"),
        err(("query", "limit"), "int_parsing", "not int", input="abc"),
    ]
    _, _, clean = _describe(errors)
    assert clean == [
        {"loc": ["body", "payload", "0"], "msg": "bad", "type": "dict_type"},
        {"loc": ["query", "limit"], "msg": "not int", "type": "int_parsing"},
    ]


def test_errors_list_keeps_every_error_even_when_one_is_decisive() -> None:
    errors = [err(("body", "to"), "missing"), err(("body", "cmd"), "string_too_long", "long")]
    _, _, clean = _describe(errors)
    assert [e["loc"] for e in clean] == [["body", "to"], ["body", "cmd"]]


def test_error_response_shape() -> None:
    response = error_response(418, "teapot", [{"loc": ["body"], "msg": "m", "type": "t"}])
    assert response.status_code == 418
    assert json.loads(bytes(response.body)) == {
        "status": "error",
        "msg": "teapot",
        "errors": [{"loc": ["body"], "msg": "m", "type": "t"}],
    }


def test_error_response_without_errors_has_no_errors_key() -> None:
    assert json.loads(bytes(error_response(400, "bad").body)) == {"status": "error", "msg": "bad"}


# The handlers, installed on a small FastAPI app that uses the real request bodies


def _app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/send")
    async def send(body: SendRequest) -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/callback")
    async def callback(body: CallbackRequest) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/logs")
    async def logs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: int | None = None
    ) -> dict[str, str]:
        return {"status": "ok"}

    @app.delete("/logs")
    async def forget() -> dict[str, str]:
        return {"status": "ok"}

    more = APIRouter()

    @more.put("/logs")
    async def replace() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(more)

    @app.get("/raise/{what}")
    async def boom(what: str) -> None:
        errors: dict[str, Exception] = {
            "api": ApiError(401, UNAUTHORIZED, headers={"WWW-Authenticate": "key"}),
            "broker": BrokerUnavailable("down"),
            "refused": PublishRefused("nack"),
            "database": DatabaseUnavailable("down"),
            "unexpected": RuntimeError("secret detail"),
        }
        raise errors[what]

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_real_missing_to_answers_the_seed_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"from": "master"})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert body["msg"] == "missing from/to"
    assert body["errors"][0]["loc"] == ["body", "to"]
    assert "detail" not in body


async def test_real_missing_from_answers_the_seed_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"to": "child"})
    assert (response.status_code, response.json()["msg"]) == (400, "missing from/to")


async def test_real_missing_task_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/callback", json={"status": "done"})
    assert (response.status_code, response.json()["msg"]) == (400, "missing task_id")


async def test_real_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/send", content=b'{"from": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "request body is not valid JSON"


async def test_real_missing_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["msg"]) == (400, "request body is missing")


async def test_real_query_error_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/logs", params={"after": "abc"})
    assert response.status_code == 400
    assert response.json()["msg"].startswith("invalid query parameter after: ")


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "1.5"])
async def test_real_bad_limit_is_the_contracts_400(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/logs", params={"limit": limit})
    assert response.status_code == 400
    assert response.json()["msg"] == "limit must be an integer from 1 to 1000"


@pytest.mark.parametrize("method", ["OPTIONS", "POST", "PATCH"])
async def test_a_405_allows_every_method_served_at_the_path(
    client: httpx.AsyncClient, method: str
) -> None:
    # Three routes, one an included router's: Starlette alone would name the first one's GET.
    response = await client.request(method, "/logs")
    assert response.status_code == 405
    assert response.json() == {"status": "error", "msg": "method not allowed"}
    assert response.headers["allow"] == "DELETE, GET, PUT"


async def test_real_other_body_error_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"from": "m", "to": "c", "payload": [1]})
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "error"
    assert body["msg"].startswith("invalid request: payload: ")
    assert set(body["errors"][0]) == {"loc", "msg", "type"}


async def test_real_extra_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"from": "m", "to": "c", "bogus": 1})
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "extra_forbidden"


async def test_real_nul_character_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"from": "m", "to": "c", "text": "a\u0000b"})
    assert response.status_code == 422
    assert response.json()["status"] == "error"
    assert "NUL" in response.json()["msg"]


async def test_not_found_and_method_not_allowed_in_contract_shape(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"status": "error", "msg": "not found"}
    wrong = await client.get("/send")
    assert wrong.status_code == 405
    assert wrong.json() == {"status": "error", "msg": "method not allowed"}


@pytest.mark.parametrize(
    ("what", "status", "msg"),
    [
        ("api", 401, UNAUTHORIZED),
        ("broker", 503, "message bus unavailable: RabbitMQ did not confirm, nothing was sent"),
        ("refused", 503, "message bus refused the message, nothing was sent"),
        ("database", 503, "database unavailable"),
        ("unexpected", 500, "internal error"),
    ],
)
async def test_raised_errors_answer_the_contract_shape(
    client: httpx.AsyncClient, what: str, status: int, msg: str
) -> None:
    response = await client.get(f"/raise/{what}")
    assert response.status_code == status
    assert response.json() == {"status": "error", "msg": msg}
    assert "secret detail" not in response.text


async def test_unauthorized_keeps_its_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/raise/api")
    assert response.headers["www-authenticate"] == "key"


async def test_broker_unavailable_asks_to_retry(client: httpx.AsyncClient) -> None:
    response = await client.get("/raise/broker")
    assert response.headers["retry-after"] == "1"
