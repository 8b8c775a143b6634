"""Schemathesis hooks (SCHEMATHESIS_HOOKS) for the rules of a send the fuzzer does not read.

- A `deadline` must lie ahead, at most RELAY_MAX_DEADLINE_S: a rule of the clock, which the
  field's description states and JSON Schema cannot. A valid case's deadline is moved to a
  minute from now.
- A deadline or a `ttl_s`, not both: the OpenAPI says it with a top-level `not`, which the
  coverage phase does not apply when it makes valid cases. A valid case keeps the deadline.

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


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    body = case.body
    meta = case.meta
    positive = meta is None or meta.generation.mode == GenerationMode.POSITIVE
    if not (positive and isinstance(body, dict) and isinstance(body.get("deadline"), str)):
        return case
    if _TIMESTAMP.fullmatch(body["deadline"]):
        soon = datetime.now(UTC) + timedelta(minutes=1)
        body = {**body, "deadline": soon.isoformat().replace("+00:00", "Z")}
        if body.get("ttl_s") is not None:
            body["ttl_s"] = None
        case.body = body
    return case
