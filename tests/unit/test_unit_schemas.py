"""shared/schemas.py: what the bus refuses, bounds and normalises in the bodies it accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from shared.schemas import CallbackRequest, Event, SendRequest

NOW = datetime.now(UTC)


def callback(**fields: Any) -> CallbackRequest:
    return CallbackRequest.model_validate({"task_id": "t_1", **fields})


@pytest.mark.parametrize("attempt", [0, -1, 1_000_001, 2**31, 2**63])
def test_an_attempt_beyond_any_database_integer_is_refused(attempt: int) -> None:
    with pytest.raises(ValidationError):
        callback(attempt=attempt)
    with pytest.raises(ValidationError):
        Event.model_validate({"event_id": "e_1", "event": "retry", "ts": NOW, "attempt": attempt})


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "1969-12-31T23:59:59Z"]
)
def test_timestamps_a_database_cannot_read_back_are_refused(when: str) -> None:
    with pytest.raises(ValidationError):
        callback(started_at=when)
    with pytest.raises(ValidationError):
        Event.model_validate({"event_id": "e_1", "event": "ack", "ts": when})


def test_timestamps_are_kept_in_utc() -> None:
    started = callback(started_at="2026-11-28T17:30:00+05:30").started_at
    assert started == datetime(2026, 11, 28, 12, 0, tzinfo=UTC) and started.tzinfo is UTC
    ts = Event.model_validate(
        {
            "event_id": "e_1",
            "event": "ack",
            "ts": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-3))),
        }
    ).ts
    assert ts == datetime(2026, 1, 1, 3, tzinfo=UTC) and ts.tzinfo is UTC


def test_a_run_started_ahead_of_the_apis_clock_is_dated_now() -> None:
    ahead = callback(started_at=NOW + timedelta(hours=3)).started_at
    assert ahead is not None and NOW <= ahead <= datetime.now(UTC)
    earlier = NOW - timedelta(days=2)
    assert callback(started_at=earlier).started_at == earlier


# What the JSON Schema of a request (its OpenAPI) says against what the API does with it


def documented(model: type[BaseModel], body: dict[str, Any]) -> bool:
    schema = model.model_json_schema(by_alias=True)
    return bool(jsonschema.Draft202012Validator(schema).is_valid(body))


def accepted(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate_json(json.dumps(body))
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("started_at", "ok"),
    [
        ("2026-05-01T09:30:00Z", True),
        ("2026-05-01T09:30:00.123456789+05:30", True),
        ("1970-01-01T00:00:00Z", True),
        ("1970-01-01T00:30:00+01:00", True),  # the year as written: 1969 in UTC
        ("8999-12-31T23:59:59.5-23:59", True),
        ("1969-12-31T23:59:59Z", False),
        ("9000-01-01T00:00:00Z", False),
        ("2026-05-01T09:30:00", False),  # no offset
        ("2026-05-01 09:30:00Z", False),  # pydantic reads these; the OpenAPI does not say them
        ("2026-05-01t09:30:00z", False),
        ("2026-05-01T09:30Z", False),
        ("2026-05-01T09:30:00+0530", False),
        ("1700000000", False),
        (1700000000, False),
    ],
)
def test_a_callbacks_started_at_is_accepted_as_documented(started_at: Any, ok: bool) -> None:
    body = {"task_id": "t_1", "started_at": started_at}
    assert documented(CallbackRequest, body) is ok
    assert accepted(CallbackRequest, body) is ok


def test_a_timestamp_on_the_wire_is_read_as_pydantic_reads_it() -> None:
    # The OpenAPI's spelling binds requests; a foreign child's event keeps every spelling.
    event = {"event_id": "e_1", "event": "ack", "ts": "2026-05-01 09:30:00Z"}
    assert Event.model_validate(event).ts == datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "ok", "refused_by_the_model"),
    [
        ({"from": "m", "to": "c"}, True, False),
        ({"from": "m", "to": "c", "type": "task", "task_id": "x1"}, True, False),
        ({"from": "m", "to": "c", "type": "message", "task_id": None}, True, False),
        # the route's 400 "task_id applies only to tasks" and 422 for the bus's own prefix
        ({"from": "m", "to": "c", "task_id": "x1"}, False, False),
        ({"from": "m", "to": "c", "type": "task", "task_id": "t_x1"}, False, False),
        ({"from": "m", "to": "a.parked", "type": "task"}, False, True),
        ({"from": "m", "to": "delay.b", "type": "task"}, False, True),
        ({"from": "m", "to": "delayed", "type": "task"}, True, False),
        ({"from": "m", "to": "a.parked"}, True, False),  # a message names no pool
        ({"from": "m", "to": "c", "payload": {"k": [{"n": 1.5, "s": "é"}]}}, True, False),
        ({"from": "m", "to": "c", "payload": {"k": ["a\x00"]}}, False, True),
        ({"from": "m", "to": "c", "payload": {"k": {"k\x00": 1}}}, False, True),
        ({"from": "m", "to": "c", "text": "a\x00b"}, False, True),
        ({"from": "m", "to": "c", "cmd": "a\x00"}, False, True),
    ],
)
def test_a_send_is_accepted_as_documented(
    body: dict[str, Any], ok: bool, refused_by_the_model: bool
) -> None:
    assert documented(SendRequest, body) is ok
    assert accepted(SendRequest, body) is not refused_by_the_model


@pytest.mark.parametrize(
    ("result", "ok"), [({"a": [1, None, "x"]}, True), ("a\x00", False), ({"\x00": 1}, False)]
)
def test_a_callbacks_result_is_accepted_as_documented(result: Any, ok: bool) -> None:
    body = {"task_id": "t_1", "result": result}
    assert documented(CallbackRequest, body) is ok
    assert accepted(CallbackRequest, body) is ok


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ttl_s": 5, "deadline": "2099-01-01T00:00:00Z"}, "not both"),
        ({"deadline": "2020-01-01T00:00:00Z"}, "in the future"),
        ({"type": "message", "deadline": "2099-01-01T00:00:00Z"}, "only to tasks"),
        ({"type": "message", "ttl_s": 5}, "only to tasks"),
        ({"type": "message", "timeout_s": 5}, "only to tasks"),
        ({"type": "message", "delay_s": 5}, "only to tasks"),
        ({"type": "message", "not_before": "2099-01-01T00:00:00Z"}, "only to tasks"),
        ({"delay_s": 5, "not_before": "2099-01-01T00:00:00Z"}, "not both"),
        ({"delay_s": 0}, "greater than 0"),
        ({"delay_s": 31 * 86_400}, "less than or equal"),
        ({"delay_s": "5"}, "valid number"),
        ({"not_before": "2099-01-01T00:00:00"}, "RFC 3339"),
    ],
)
def test_a_sends_deadline_and_timeout_rules(extra: dict[str, Any], message: str) -> None:
    body = {"from": "m", "to": "child", "type": "task"} | extra
    with pytest.raises(ValidationError, match=message):
        SendRequest.model_validate(body)
