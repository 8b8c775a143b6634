"""Schemathesis hooks (SCHEMATHESIS_HOOKS) for the rules of a send the fuzzer does not read.

Rules of the clock, which the fields' descriptions state and JSON Schema cannot:
- a `deadline` must lie ahead, at most RELAY_MAX_DEADLINE_S: a valid case's deadline is moved to
  a minute from now;
- a `not_before` at most RELAY_MAX_DEADLINE_S ahead, and before the deadline: moved to 30 s from
  now; a `delay_s` at most 10 s; a `ttl_s` with either at least 60 s.
And the pairs of which a send takes one (a deadline or a `ttl_s`, a not_before or a `delay_s`):
a valid case keeps the first of each pair.

And reads that may wait (`wait`): a valid case waits at most 0.2 s. A valid send's `notify`
is dropped: its URL must name a host of RELAY_WEBHOOK_HOSTS, which the schema cannot say.

Only cases meant to be valid are changed; those meant to be refused are sent as made.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from schemathesis.generation import GenerationMode

from shared.schemas import TIMESTAMP_PATTERN

_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _from_now(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _valid_time(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    return isinstance(value, str) and bool(_TIMESTAMP.fullmatch(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    body = case.body
    meta = case.meta
    positive = meta is None or meta.generation.mode == GenerationMode.POSITIVE
    query = case.query
    if positive and isinstance(query, dict) and _number(query.get("wait")):
        case.query = {**query, "wait": min(query["wait"], 0.2)}
    if not (positive and isinstance(body, dict)):
        return case
    body = dict(body)
    body.pop("notify", None)
    if _valid_time(body, "deadline"):
        body["deadline"] = _from_now(60)
        if body.get("ttl_s") is not None:
            body["ttl_s"] = None
    if _valid_time(body, "not_before"):
        body["not_before"] = _from_now(30)
        if body.get("delay_s") is not None:
            body["delay_s"] = None
    if _number(body.get("delay_s")):
        body["delay_s"] = min(body["delay_s"], 10)
    if (body.get("not_before") or body.get("delay_s")) and _number(body.get("ttl_s")):
        body["ttl_s"] = max(body["ttl_s"], 60)
    case.body = body
    return case
