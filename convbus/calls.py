"""What the client's two faces share, free of I/O: each request as a `Call`, the reading of an
answer, the retry schedule, and the reading of a Server-Sent Events stream. `Client` and
`AsyncClient` (convbus/client.py) only send them, each with its own HTTP client."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from convbus.errors import ClientError, error_for
from shared.contract import (
    API_PREFIX,
    IDEMPOTENCY_KEY_HEADER,
    SEND_PATH,
    TASK_STATUS_PATH,
    TASKS_PATH,
)
from shared.schemas import FINAL_STATES, SETTLED_STATES, TaskResponse

#: Answers worth another try: the API or what it needs is busy or away for a moment.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The longest one request asks the API to wait (RELAY_MAX_WAIT_S is 60 by default).
WAIT_PER_REQUEST_S = 30.0


class Entry(BaseModel):
    """A log entry, as GET /logs, GET /stream and an inbox give it; the event's other fields
    (`result`, `question`, `text`, …) are there too, as `entry.result`, or in `model_extra`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: int
    event: str
    ts: datetime
    task_id: str | None = None
    conversation_id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """An event field that is not one of the columns above (None if absent)."""
        return (self.model_extra or {}).get(name, default)


@dataclass(frozen=True)
class Inbox:
    """GET /inbox/{name}: entries oldest first, and how far they are acknowledged."""

    name: str
    entries: list[Entry]
    acked: int


@dataclass(frozen=True)
class Call:
    """One request: sent again as it is when it is retried (a send keeps its idempotency key)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds the API may hold it before answering (a wait): added to the client's timeout.
    holds_s: float = 0.0


def send_call(
    sender: str | None,
    to: str,
    kind: str,
    fields: Mapping[str, Any],
    idempotency_key: str | None,
) -> Call:
    """POST /send. Every send carries an idempotency key (a new one unless given, or a
    client-chosen task_id, which is one already): a send retried never makes two tasks."""
    body = {"from": sender, "to": to, "type": kind, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    headers = {}
    if "task_id" not in body:
        headers[IDEMPOTENCY_KEY_HEADER] = idempotency_key or uuid.uuid4().hex
    return Call("POST", SEND_PATH, body=body, headers=headers)


def status_call(task_id: str, wait_s: float | None = None) -> Call:
    params = {"wait": wait_s} if wait_s else None
    return Call("GET", f"{TASK_STATUS_PATH}/{task_id}", params=params, holds_s=wait_s or 0.0)


def task_call(task_id: str, wait_s: float | None = None, after_round: int | None = None) -> Call:
    """GET /tasks/{id}; `after_round`: a question up to it (answered) does not end a wait."""
    params: dict[str, Any] = {}
    if wait_s:
        params["wait"] = wait_s
        if after_round:
            params["after_round"] = after_round
    return Call("GET", f"{TASKS_PATH}/{task_id}", params=params or None, holds_s=wait_s or 0.0)


def inbox_call(name: str, after: int | None, limit: int | None, wait_s: float | None) -> Call:
    params = {"after": after, "limit": limit, "wait": wait_s or None}
    return Call(
        "GET",
        f"{API_PREFIX}/inbox/{name}",
        params={k: v for k, v in params.items() if v is not None},
        holds_s=wait_s or 0.0,
    )


def inbox_ack_call(name: str, up_to: int) -> Call:
    return Call("POST", f"{API_PREFIX}/inbox/{name}/ack", body={"up_to": up_to})


def answer_call(task_id: str, answer: Any, as_: str | None) -> Call:
    body: dict[str, Any] = {"answer": answer}
    if as_ is not None:
        body["from"] = as_
    return Call("POST", f"{TASKS_PATH}/{task_id}/input", body=body)


def cancel_call(task_id: str) -> Call:
    return Call("POST", f"{TASKS_PATH}/{task_id}/cancel")


def stream_params(filters: Mapping[str, Any]) -> dict[str, Any]:
    """The query of GET /stream (`from_` may be spelt so, as a keyword)."""
    params = {("from" if k == "from_" else k): v for k, v in filters.items() if v is not None}
    return params


def settled(record: TaskResponse, after_round: int | None) -> bool:
    """Whether a wait for this task is over: it ended, or it waits for an answer to a question
    after `after_round` (one this client answered is not that)."""
    if record.task_status == "input_required" and after_round and record.asking is not None:
        return record.asking.round > after_round
    return record.task_status in SETTLED_STATES


class AnsweredRounds:
    """The last round this client answered, by task: `wait` then waits past it. Bounded: the
    oldest are forgotten first."""

    def __init__(self, most: int = 10_000) -> None:
        self.most = most
        self._rounds: dict[str, int] = {}

    def answered(self, task_id: str, round_: int) -> None:
        self._rounds.pop(task_id, None)
        self._rounds[task_id] = round_
        if len(self._rounds) > self.most:
            del self._rounds[next(iter(self._rounds))]

    def of(self, task_id: str) -> int | None:
        return self._rounds.get(task_id)

    def settled(self, record: TaskResponse) -> bool:
        """As `settled`, for this client; a task that ended is forgotten."""
        if record.task_status in FINAL_STATES:
            self._rounds.pop(record.task_id, None)
        return settled(record, self._rounds.get(record.task_id))


def read_answer(status: int, content: bytes) -> dict[str, Any]:
    """The body of a 2xx answer; raises the contract's error as an exception otherwise."""
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300 and isinstance(body, dict):
        return body
    if isinstance(body, dict) and isinstance(body.get("msg"), str):
        raise error_for(status, body["msg"], body.get("errors"))
    text = content[:200].decode(errors="replace")
    if 200 <= status < 300:
        raise ClientError(f"not the JSON object the contract says: {text!r}", status=status)
    raise error_for(status, text or f"HTTP {status}")


@dataclass
class Backoff:
    """How long to wait before try `n` (from 1): `first`, doubling up to `cap`, or what the
    server's Retry-After says, if it says longer."""

    first: float = 0.2
    cap: float = 5.0

    def delay(self, tries_so_far: int, retry_after: str | None = None) -> float:
        wait: float = min(self.cap, self.first * 2.0 ** (tries_so_far - 1))
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                wait = max(wait, min(float(retry_after), 60.0))
        return wait


class SseReader:
    """Server-Sent Events, line by line: the entry of each event that has data; keep-alives
    (comments) and events without data give nothing."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> Entry | None:
        if line.endswith("\r"):
            line = line[:-1]
        if line:
            if line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
            return None  # `id:` repeats the entry's own id; comments are keep-alives
        data, self._data = self._data, []
        return Entry.model_validate_json("\n".join(data)) if data else None
