"""Typed bodies: what travels over HTTP and over AMQP."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from shared.contract import IDENT_PATTERN, MAX_CALLBACKS, NAME_PATTERN
from shared.ids import TASK_PREFIX, utc_iso
from shared.topology import RESERVED_POOL_PATTERN, Priority, Topology

#: A string PostgreSQL can store: no NUL character. `_NoNul` refuses them in one pass over a
#: body; the JSON Schema says it of every string with this pattern.
NUL_FREE_PATTERN = r"^[^\u0000]*$"
_NUL_FREE = Field(json_schema_extra={"pattern": NUL_FREE_PATTERN})
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Ident = Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]
Cmd = Annotated[str, StringConstraints(min_length=1, max_length=128), _NUL_FREE]
Text = Annotated[str, StringConstraints(max_length=100_000), _NUL_FREE]
#: Attempts of one task; far above any retry policy, below every database's integer.
Attempt = Annotated[int, Field(ge=1, le=1_000_000)]
#: A moment on the bus: with a UTC offset, written in the years 1970 to 8999, stored in UTC
#: (then at most a day outside those years: years every database reads back).
_FIRST_YEAR, _LAST_YEAR = 1970, 8999
#: Such a moment as the OpenAPI describes it (with `format: date-time`, RFC 3339): a `T`, `Z` or
#: an offset, a year from 1970 to 8999. A request's timestamp is spelt so (`_as_documented`); on
#: the wire pydantic reads more spellings (tests/unit/test_unit_schemas.py checks both).
TIMESTAMP_PATTERN = (
    r"^(19[7-9][0-9]|[2-8][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _in_utc(value: datetime) -> datetime:
    # The year as written, not in UTC: a pattern can say that one.
    if not _FIRST_YEAR <= value.year <= _LAST_YEAR:
        raise ValueError(f"a timestamp written in the years {_FIRST_YEAR} to {_LAST_YEAR}")
    return value.astimezone(UTC)


Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_in_utc),
    Field(json_schema_extra={"pattern": TIMESTAMP_PATTERN}),
]


def _as_documented(value: Any) -> Any:
    """A timestamp in a request is a string as the OpenAPI says (pydantic would read a number of
    seconds since 1970 as well, or a space for the `T`: what the OpenAPI says is all it takes)."""
    if isinstance(value, str) and not _TIMESTAMP.fullmatch(value):
        raise ValueError("an RFC 3339 date-time such as 2026-05-01T09:30:00Z, years 1970 to 8999")
    if not isinstance(value, str | datetime):
        raise ValueError("a timestamp is a string")
    return value


def _not_ahead(value: datetime) -> datetime:
    # A child's clock ahead of ours would otherwise date the task's last change in the future.
    return min(value, datetime.now(UTC))


#: A timestamp as a request spells it (the OpenAPI's `date-time`), not only as pydantic reads it.
RequestTimestamp = Annotated[Timestamp, BeforeValidator(_as_documented)]


def deadline_missed(deadline: datetime) -> str:
    """The error of a task that ends `expired`: the child's and the tracker's say the same."""
    return f"not started by its deadline {utc_iso(deadline)}"


TaskState = Literal[
    "scheduled",
    "pending",
    "processing",
    "retrying",
    "input_required",
    "completed",
    "failed",
    "expired",
    "canceled",
]
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "expired", "canceled"})
#: The states a wait for a task answers at: it ended, or it waits for an answer.
SETTLED_STATES: frozenset[str] = FINAL_STATES | {"input_required"}
EventName = Literal[
    "message",
    "processing",
    "callback",
    "ack",
    "retry",
    "dead",
    "replay",
    "lease",
    "progress",
    "lease_expired",
    "expired",
    "cancel",
    "input_required",
    "input",
    "withdrawn",
]
#: The longest a handler may be given (`timeout_s`): a week.
MAX_TIMEOUT_S = 7 * 24 * 3600
#: Seconds: how long a handler may run; above 0, at most MAX_TIMEOUT_S.
TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False, strict=True)]
#: The longest a send may put off its task's start (`delay_s`): 30 days, the default of
#: RELAY_MAX_DEADLINE_S, which bounds a `not_before` (and this, when set lower).
MAX_DELAY_S = 30 * 24 * 3600
#: Seconds: how long a task waits before it may start; above 0, at most MAX_DELAY_S.
DelaySeconds = Annotated[float, Field(gt=0, le=MAX_DELAY_S, allow_inf_nan=False, strict=True)]
#: A handler's progress, from 0 (started) to 1 (all done).
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]
#: A progress report's words (`progress_note`).
Note = Annotated[str, StringConstraints(max_length=1000), _NUL_FREE]


def _has_nul(value: Any) -> bool:
    """Whether a NUL character hides in `value` (PostgreSQL text and JSONB refuse it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, BaseModel):  # a task's `inputs` (in POST /tasks/{id}/ask)
        return any(_has_nul(getattr(value, name)) for name in type(value).model_fields)
    return False


_NulFreeText = Annotated[str, StringConstraints(pattern=NUL_FREE_PATTERN)]
#: Keys that match no pattern are not allowed: a key with a NUL character.
_ONLY_PATTERN_KEYS = Field(json_schema_extra={"additionalProperties": False})


class NulFreeJson(
    RootModel[
        _NulFreeText
        | float
        | bool
        | None
        | list["NulFreeJson"]
        | Annotated[dict[_NulFreeText, "NulFreeJson"], _ONLY_PATTERN_KEYS]
    ]
):
    """Any JSON value without a NUL character in a key or a string.

    The OpenAPI's description of a payload or a result (`_DescribedAs`), not how they are read.
    """


#: A JSON object without a NUL character in a key or a string: a send's `payload`.
NulFreeObject = Annotated[dict[_NulFreeText, NulFreeJson], _ONLY_PATTERN_KEYS]


class _DescribedAs:
    """Describes a field in JSON Schema as another type: `payload` and `result` are validated as
    any JSON and scanned by `_NoNul` (quicker than the recursive NulFreeJson would be)."""

    def __init__(self, described: Any) -> None:
        self.adapter: TypeAdapter[Any] = TypeAdapter(described)

    def __get_pydantic_json_schema__(
        self, _: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self.adapter.core_schema)


Payload = Annotated[dict[str, Any], _DescribedAs(NulFreeObject)]
Result = Annotated[Any, _DescribedAs(NulFreeJson)]


class _NoNul(BaseModel):
    """Refuses NUL characters anywhere, so what the API accepts every database can store."""

    @model_validator(mode="after")
    def _refuse_nul(self) -> Self:
        if any(_has_nul(getattr(self, name)) for name in type(self).model_fields):
            raise ValueError("strings must not contain NUL (\\u0000) characters")
        return self


#: The changes of a task's state a webhook may be sent for (the final ones by default).
NotifyEvent = Literal[
    "processing", "retrying", "input_required", "completed", "failed", "expired", "canceled"
]
#: No whitespace (spelt out, since `\s` means more characters in Python, U+0085…, than in the
#: JSON Schema's regex, which a client checks against), and no NUL (refused everywhere).
_NO_SPACE = r"[^ \t\n\r\f\v\x00"
WebhookUrl = Annotated[
    str,
    StringConstraints(pattern=rf"^https?://{_NO_SPACE}/?#]+{_NO_SPACE}]*$", max_length=2048),
]


#: What a webhook is sent for when `notify` names no events: the task's end, and a question
#: its handler asks (the task waits for an answer).
NOTIFY_BY_DEFAULT: list[NotifyEvent] = [
    "input_required",
    "completed",
    "failed",
    "expired",
    "canceled",
]


class Notify(BaseModel):
    """A task's webhook: POSTed, signed, to `url` when the task enters one of `events`."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl = Field(
        description="http(s) URL whose host is among RELAY_WEBHOOK_HOSTS (422 otherwise)"
    )
    events: Annotated[list[NotifyEvent], Field(min_length=1, max_length=7)] = Field(
        default_factory=lambda: list(NOTIFY_BY_DEFAULT)
    )


class SendFields(_NoNul):
    """The fields of a send that a task or a message carries (the seed's request body)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    from_: Name = Field(alias="from")
    to: Name
    type: Literal["task", "message"] = "message"
    cmd: Cmd | None = None
    payload: Payload | None = None
    text: Text | None = None
    conversation_id: Ident | None = None
    #: A task's handler is cancelled after this many seconds (the attempt fails: retried).
    timeout_s: TimeoutSeconds | None = None
    #: `high`: the task has its own queue and handler slots in its pool, ahead of the rest.
    priority: Priority | None = None
    #: A task not started by then never starts: it ends `expired`.
    deadline: RequestTimestamp | None = Field(
        default=None,
        description="A task not started by then never starts (it ends `expired`); in the "
        "future, at most RELAY_MAX_DEADLINE_S (30 days) ahead: 422 otherwise.",
    )
    #: The task does not start before then: it is `scheduled` until then.
    not_before: RequestTimestamp | None = Field(
        default=None,
        description="The task does not start before then (it is `scheduled` until then); at "
        "most RELAY_MAX_DEADLINE_S (30 days) ahead, before the deadline if there is one: 422 "
        "otherwise. A time already past: the task starts at once.",
    )
    #: A webhook for the task's changes of state (docs/wire.md, "Webhooks").
    notify: Notify | None = None


def _send_rules(schema: dict[str, Any]) -> None:
    """What a send's fields require of each other, in its JSON Schema (the OpenAPI of a send):
    a task goes to a pool's name (`_task_goes_to_a_pool`); a message takes no `task_id` (400)
    nor a task's timing. That a deadline lies ahead, and not too far, and a not_before before
    it, depends on the clock: the fields' descriptions say it (422 otherwise)."""
    is_task = {"properties": {"type": {"const": "task"}}, "required": ["type"]}
    schema["if"] = is_task
    schema["then"] = {"properties": {"to": {"not": {"pattern": RESERVED_POOL_PATTERN}}}}
    schema["else"] = {"properties": {name: {"type": "null"} for name in ("task_id", *_TASK_ONLY)}}


#: Fields of a send that only a task may have.
_TASK_ONLY = ("timeout_s", "deadline", "ttl_s", "priority", "not_before", "delay_s", "notify")

#: A client-chosen task id: the bus's own `t_…` ids are not the client's to choose (422).
ClientTaskId = Annotated[Ident, Field(json_schema_extra={"not": {"pattern": f"^{TASK_PREFIX}"}})]


class SendRequest(SendFields):
    """POST /api/relay/send."""

    model_config = ConfigDict(json_schema_extra=_send_rules)

    @model_validator(mode="after")
    def _task_goes_to_a_pool(self) -> Self:
        if self.type == "task" and not Topology.is_pool_name(self.to):
            raise ValueError("to: a task's pool name may not contain 'parked' or 'delay' as a word")
        if self.type == "message":
            given = [name for name in _TASK_ONLY if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{given[0]} applies only to tasks")
        if self.deadline is not None and self.ttl_s is not None:
            raise ValueError("give a deadline or a ttl_s, not both")
        if self.not_before is not None and self.delay_s is not None:
            raise ValueError("give a not_before or a delay_s, not both")
        if self.deadline is not None and self.deadline <= datetime.now(UTC):
            raise ValueError("deadline: a time in the future")
        return self

    ttl_s: TimeoutSeconds | None = Field(
        default=None,
        description="The deadline as seconds from now: a task not started by then never starts.",
    )

    delay_s: DelaySeconds | None = Field(
        default=None,
        description="The not_before as seconds from now: the task waits `scheduled` that long.",
    )

    task_id: ClientTaskId | None = Field(
        default=None,
        description="Client-chosen id (not `t_…`): sending it again creates nothing new.",
    )


#: The most rounds of questions one task may ask (its messages carry every one).
MAX_INPUT_ROUNDS = 100
#: A question's words.
Question = Annotated[str, StringConstraints(min_length=1, max_length=10_000), _NUL_FREE]


class InputRound(BaseModel):
    """One question a task's handler asked, and its answer (`task.inputs`)."""

    model_config = ConfigDict(extra="ignore")

    #: 1 for the task's first question, then 2, …
    round: Annotated[int, Field(ge=1, le=MAX_INPUT_ROUNDS)]
    question: Question
    #: Who was asked.
    to: Name
    asked_at: RequestTimestamp
    #: NUL-free, as a send's payload (the database stores it): the schema says so.
    answer: Result = None
    answered_by: Name
    answered_at: RequestTimestamp


class TaskMessage(SendFields):
    """A task on the wire: the body of a message on the tasks exchange."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    type: Literal["task", "message"] = "task"
    task_id: Ident
    #: A string as the OpenAPI says, as every field of a task is (a foreign child sends a task
    #: back in POST /tasks/{id}/ask).
    created_at: RequestTimestamp
    #: The questions its handler asked so far, with their answers, oldest first (None: none).
    inputs: Annotated[list[InputRound], Field(max_length=MAX_INPUT_ROUNDS)] | None = None

    @property
    def answers(self) -> list[Any]:
        """The answers so far, oldest first: `task.answers[-1]` is the latest."""
        return [asked.answer for asked in self.inputs or ()]


class Event(BaseModel):
    """An event on the wire: the body of a message on the events exchange."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    event_id: Ident
    event: EventName
    ts: Timestamp
    task_id: Ident | None = None
    conversation_id: Ident | None = None
    from_: Name | None = Field(default=None, alias="from")
    to: Name | None = None
    # message
    type: Literal["task", "message"] | None = None
    cmd: Cmd | None = None
    payload: dict[str, Any] | None = None
    text: Text | None = None
    # processing, callback, retry, dead
    child_id: Name | None = None
    attempt: Attempt | None = None
    status: Literal["done", "failed"] | None = None
    result: Any = None
    error: Text | None = None
    # retry: when the next attempt runs
    next_at: Timestamp | None = None
    # dead, replay: the parking lot involved
    queue: str | None = None
    # ack
    ack_by: Name | None = None
    # cancel: who asked
    canceled_by: Name | None = None
    # callback: the run that produced it, for the `processing` entry the tracker derives
    run_id: Ident | None = None
    started_at: Timestamp | None = None
    # lease, progress: the task's lease runs this long past the event's `ts`
    lease_s: float | None = None
    # lease: the task as the child received it, which the tracker sends again should the
    # child fall silent (services/tracker/overdue.py); `replays` is its x-replays header
    task: TaskMessage | None = None
    replays: int | None = None
    # progress
    progress: float | None = None
    note: Text | None = None
    # input_required (from: the pool asking, to: who is asked; `task` as the child received
    # it) and input (from: who answered): the round of the question, its words, the answer
    round: Annotated[int, Field(ge=1, le=MAX_INPUT_ROUNDS)] | None = None
    question: Question | None = None
    answer: Any = None


class CallbackRequest(_NoNul):
    """POST /api/relay/callback."""

    model_config = ConfigDict(extra="forbid")

    task_id: Ident
    child_id: Name | None = None
    status: Literal["done", "failed"] = "done"
    result: Result = None
    error: Text | None = None
    #: The run that produced the outcome: with `run_id` and `started_at` the tracker records
    #: the run's `processing` entry, which a fast child does not publish itself.
    attempt: Attempt | None = None
    run_id: Ident | None = None
    started_at: (
        Annotated[Timestamp, BeforeValidator(_as_documented), AfterValidator(_not_ahead)] | None
    ) = None


class BatchedCallback(BaseModel):
    """One callback of POST /api/relay/callbacks."""

    model_config = ConfigDict(extra="forbid")

    callback: CallbackRequest
    #: As the X-Relay-First-Callback header of /callback: this task never had a callback before.
    first: Annotated[bool, Field(strict=True)] = False


class CallbacksRequest(BaseModel):
    """POST /api/relay/callbacks: many callbacks, each handled as POST /callback handles one."""

    model_config = ConfigDict(extra="forbid")

    callbacks: list[BatchedCallback] = Field(min_length=1, max_length=MAX_CALLBACKS)


class ProgressRequest(_NoNul):
    """POST /api/relay/tasks/{task_id}/progress: a running handler's progress (foreign child)."""

    model_config = ConfigDict(extra="forbid")

    child_id: Name | None = None
    attempt: Attempt | None = None
    progress: Fraction | None = None
    note: Note | None = None


class InputRequest(_NoNul):
    """POST /api/relay/tasks/{task_id}/input: the answer to the question the task waits on."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    answer: Result = Field(description="Any JSON: the handler finds it in `task.inputs`.")
    #: Who answers: the key's own name, unless the key sends as anyone.
    from_: Name | None = Field(default=None, alias="from")


class AskRequest(_NoNul):
    """POST /api/relay/tasks/{task_id}/ask: a child that is not the bus's own asks a question
    (the bus's own children publish it on the bus); the task waits `input_required`."""

    model_config = ConfigDict(extra="forbid")

    question: Question
    #: Who is asked: the task's sender when not given.
    to: Name | None = None
    #: The task's message as the child received it (it comes back, with the answer in
    #: `inputs`, once answered).
    task: TaskMessage
    child_id: Name | None = None
    attempt: Attempt | None = None


class AckRequest(BaseModel):
    """POST /api/relay/ack."""

    model_config = ConfigDict(extra="forbid")

    task_id: Ident
    ack_by: Name = "master"


def _no_bool(value: object) -> object:
    """JSON's true and false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("a log id, not a boolean")
    return value


class InboxAckRequest(BaseModel):
    """POST /api/relay/inbox/{name}/ack: every entry of the inbox up to `up_to` was read."""

    model_config = ConfigDict(extra="forbid")

    #: Beyond the newest log entry: up to the newest (an inbox never skips what is yet to come).
    up_to: Annotated[int, Field(ge=0), BeforeValidator(_no_bool)]


class Ok(BaseModel):
    """A plain success."""

    status: Literal["ok"] = "ok"


class SendResponse(Ok):
    """The answer to a send; `task_id` is null for a message."""

    task_id: str | None


class CancelResponse(Ok):
    """The answer to a cancel: the task will not start, and a running handler is cancelled."""

    task_id: str


class CancelsResponse(Ok):
    """GET /api/relay/cancels: the tasks canceled since a moment (a child reads them)."""

    task_ids: list[str]


class CallbackResponse(Ok):
    """The answer to a callback (seed: `{"status":"ok"}`); `duplicate: true` for a final task."""

    duplicate: bool | None = None


class CallbackAnswer(BaseModel):
    """One callback's answer in a batch: the body /callback would have answered, and its status."""

    code: int = Field(description="The HTTP status /callback would have answered.")
    status: Literal["ok", "error"]
    duplicate: bool | None = None
    msg: str | None = None


class CallbacksResponse(Ok):
    """The answer to POST /api/relay/callbacks: one answer per callback, in the same order."""

    results: list[CallbackAnswer]


class InputResponse(Ok):
    """The answer to an answer: the task goes back to its pool with it."""

    task_id: str
    round: int


class Asking(BaseModel):
    """The question a task waits on (`input_required`)."""

    round: int
    question: str
    #: Who is asked (who may answer, besides an admin).
    to: str
    asked_at: datetime


class TaskStatusResponse(Ok):
    """The answer of task-status (seed)."""

    task_id: str
    task_status: TaskState


class TaskResponse(BaseModel):
    """GET /api/relay/tasks/{task_id}: the whole record of a task."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    status: Literal["ok"] = "ok"
    task_id: str
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    type: str = "task"
    cmd: str | None = None
    payload: dict[str, Any] | None = None
    text: str | None = None
    conversation_id: str | None = None
    task_status: TaskState
    attempts: int = 0
    child_id: str | None = None
    result: Any = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    #: A task not started by then never starts (it ends `expired`).
    deadline: datetime | None = None
    #: The task does not start before then; `scheduled` until then.
    not_before: datetime | None = None
    priority: str | None = None
    #: The handler's last progress report (0 to 1) and its words.
    progress: float | None = None
    progress_note: str | None = None
    #: A run past the child's hold (RELAY_HOLD_DELIVERY): the child's lease runs until then,
    #: renewed by its heartbeats; once past, the tracker sends the task again.
    lease_until: datetime | None = None
    #: The question the task waits on, while it is `input_required`.
    asking: Asking | None = None
    #: Fields left out (null above) for a reader who is not the task's own: its payload, text,
    #: result, error and progress note go to its sender, its pool's key and operators.
    withheld: list[str] | None = None


class TaskSummary(BaseModel):
    """A row of GET /api/relay/tasks: a task without its payload, text and result."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    task_id: str
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    cmd: str | None = None
    conversation_id: str | None = None
    task_status: TaskState
    attempts: int = 0
    child_id: str | None = None
    priority: str | None = None
    progress: float | None = None
    #: The error's first 300 characters (the whole one is on GET /tasks/{task_id}).
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None


class NextPage(BaseModel):
    """The query of the next (older) page: the same filters, with these."""

    before: datetime
    before_id: str


class TaskListResponse(Ok):
    """GET /api/relay/tasks: a page of tasks, newest first."""

    tasks: list[TaskSummary]
    #: Where the next page starts; null on the last page.
    next_page: NextPage | None = None


class QueueDepths(BaseModel):
    """A pool's queues as RabbitMQ counts them."""

    ready: int
    unacked: int
    consumers: int
    #: Tasks in the pool's parking lot (failed for good, or refused): GET /dlq lists them.
    parked: int
    #: Tasks waiting in the pool's retry queues for their next attempt.
    retrying: int
    #: High-priority tasks, ready or delivered.
    high: int


class PoolActivity(BaseModel):
    """One pool: its queues, and what its tasks did in the last minute."""

    pool: str
    #: Null when RabbitMQ's management API could not be read (`queues_error` says why).
    queues: QueueDepths | None = None
    sent_last_minute: int = 0
    #: Tasks that ended (completed, failed, expired, canceled) in the last minute.
    ended_last_minute: int = 0
    failed_last_minute: int = 0


class TrackerDepths(BaseModel):
    #: Sends and events in the tracker's queue, not yet in its database.
    lag: int
    consumers: int
    parked: int


class RecentFailure(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    task_id: str
    to: str | None = None
    cmd: str | None = None
    attempts: int = 0
    error: str | None = None
    completed_at: datetime | None = None


class OverviewResponse(Ok):
    """GET /api/relay/overview: is work flowing, what waits, what failed."""

    measured_at: datetime
    pools: list[PoolActivity]
    #: Null when RabbitMQ's management API could not be read.
    tracker: TrackerDepths | None = None
    #: Why the queue depths are missing, if they are.
    queues_error: str | None = None
    #: How many tasks are in each unfinished state now.
    unfinished: dict[str, int]
    #: The last tasks that failed, newest first.
    recent_failures: list[RecentFailure]


class KeyInfo(Ok):
    """GET /api/relay/me: whose key this is and what it may do."""

    name: str
    scopes: list[str]
    #: The pools a `callback` key serves (null: any).
    pools: list[str] | None = None
    send_as_any: bool = False


class LogsResponse(Ok):
    """GET /api/relay/logs: entries oldest first."""

    logs: list[dict[str, Any]]


class InboxResponse(Ok):
    """GET /api/relay/inbox/{name}: entries oldest first, as in GET /logs."""

    name: str
    entries: list[dict[str, Any]]
    #: Every entry up to this log id was acknowledged (POST …/ack); without `after`, the
    #: entries are those after it.
    acked: int


class InboxAckResponse(Ok):
    """The answer to an inbox's ack: how far it is acknowledged now."""

    acked: int


class ErrorResponse(BaseModel):
    """Every error the API answers."""

    status: Literal["error"] = "error"
    msg: str
    errors: list[dict[str, Any]] | None = None


class CommitNotice(BaseModel):
    """What the tracker just committed, on the `committed` fanout (transient, unconfirmed): it
    wakes the API's waits and streams in every replica, none of which polls the database.

    `seq` counts a tracker run's notices, so a replica that misses one sees the gap and
    reads again what it waits for.
    """

    model_config = ConfigDict(extra="ignore")

    #: The tracker run that committed (a new one after each start).
    tracker: str
    seq: Annotated[int, Field(ge=1)]
    #: The highest log entry id committed so far.
    last_id: int
    #: The tasks whose row changed.
    task_ids: list[str]
    #: The parties whose inbox got an entry (a message's recipient, an ended task's sender).
    inboxes: list[str] = []
