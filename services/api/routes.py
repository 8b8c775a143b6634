"""The HTTP endpoints of the contract."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from starlette.types import Receive, Scope, Send

from services.api import hand_read, visibility
from services.api.answers import Claim
from services.api.auth import Principal
from services.api.commits import StreamFilter, Subscription, inbox_key
from services.api.deps import (
    AckKey,
    AnswerKey,
    AnyKey,
    CallbackKey,
    CancelKey,
    KeyHeader,
    Services,
    ServicesDep,
    authenticate,
    services_of,
)
from services.api.errors import ApiError, refusal_of
from services.api.hand_read import HandReadRoute
from shared import metrics, webhooks
from shared.contract import (
    API_PREFIX,
    FIRST_CALLBACK_HEADER,
    IDEMPOTENCY_KEY_HEADER,
    IDENT_PATTERN,
    MAX_LIMIT,
    MAX_LOG_ID,
    NAME_PATTERN,
)
from shared.errors import DatabaseUnavailable
from shared.ids import (
    TASK_PREFIX,
    answer_event_id,
    callback_event_id,
    cancel_event_id,
    new_event_id,
    question_event_id,
    utcnow,
)
from shared.readmodel import LogFilter, public_entry
from shared.schemas import (
    FINAL_STATES,
    MAX_INPUT_ROUNDS,
    SETTLED_STATES,
    AckRequest,
    Asking,
    AskRequest,
    BatchedCallback,
    CallbackAnswer,
    CallbackRequest,
    CallbackResponse,
    CallbacksRequest,
    CallbacksResponse,
    CancelResponse,
    CancelsResponse,
    ErrorResponse,
    Event,
    InboxAckRequest,
    InboxAckResponse,
    InboxResponse,
    InputRequest,
    InputResponse,
    LogsResponse,
    Ok,
    ProgressRequest,
    RequestTimestamp,
    SendRequest,
    SendResponse,
    TaskMessage,
    TaskResponse,
    TaskState,
    TaskStatusResponse,
)
from shared.topology import WEBHOOK_POOL

router = APIRouter(prefix=API_PREFIX)
#: Send and callback(s), the requests every task makes: their endpoints read their own request.
hand_read_router = APIRouter(prefix=API_PREFIX, route_class=HandReadRoute)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}
_SEND_FIELDS = {
    "from_", "to", "type", "cmd", "payload", "text", "conversation_id", "timeout_s", "deadline",
    "priority", "not_before", "notify",
}  # fmt: skip
#: Send fields added after idempotent sends were (the body's hash leaves them out when unset).
_LATER_FIELDS = (
    "timeout_s", "deadline", "ttl_s", "priority", "not_before", "delay_s", "notify",
)  # fmt: skip
JSON = "application/json"
FilterText = Annotated[str | None, Field(max_length=128)]


_IDEMPOTENCY_KEY = TypeAdapter(Annotated[str | None, StringConstraints(pattern=IDENT_PATTERN)])


@hand_read_router.post(
    "/send",
    response_model=SendResponse,
    responses=_ERRORS,
    openapi_extra=hand_read.documented(
        SendRequest,
        {IDEMPOTENCY_KEY_HEADER: ("A retried send with the same key creates nothing new.",
                                  IDENT_PATTERN)},
    ),
)  # fmt: skip
async def send(request: Request) -> Response:
    """Send a task to a child pool, or a message; 200 once RabbitMQ confirmed it."""
    principal = await hand_read.caller(request, "send")
    idempotency_key = hand_read.header(request, IDEMPOTENCY_KEY_HEADER, _IDEMPOTENCY_KEY)
    body = await hand_read.body(request, SendRequest)
    services = services_of(request)
    if body.from_ != principal.name and not principal.send_as_any:
        raise ApiError(403, f"Forbidden: this key sends as {principal.name!r} only")
    if body.type == "task" and not principal.may_serve(body.to):
        raise ApiError(403, f"Forbidden: this key may not send to pool {body.to!r}")
    if body.type == "task" and body.to == WEBHOOK_POOL:
        raise ApiError(422, f"to: {WEBHOOK_POOL} is the bus's own pool (webhook deliveries)")
    if body.notify is not None:
        hosts = webhooks.allowed_hosts(services.settings.webhook_hosts)
        if (why := webhooks.refusal(body.notify.url, hosts)) is not None:
            raise ApiError(422, f"notify.url: {why}")
    if wait := await services.limits.sends.take(principal.name):
        raise ApiError(429, "Too many sends for this key: retry later", {"Retry-After": str(wait)})
    now = utcnow()
    fields = body.model_dump(include=_SEND_FIELDS)
    if body.type == "task":
        most_s = services.settings.max_deadline_s
        fields["deadline"] = _deadline(body, now, most_s)
        fields["not_before"] = _not_before(body, now, most_s, fields["deadline"])
    if body.type == "message":
        if body.task_id is not None:
            raise ApiError(400, "task_id applies only to tasks")
        # A retried message with the same key carries the same event id: the log keeps one.
        event_id = _digest(f"message/{idempotency_key}", "m_") if idempotency_key else None
        event = Event(event_id=event_id or new_event_id(), event="message", ts=now, **fields)
        await services.broker.publish_event(event)
        return _answer(SendResponse(task_id=None))
    if body.task_id is not None:
        if body.task_id.startswith(TASK_PREFIX):
            raise ApiError(422, f"a client-chosen task_id must not start with {TASK_PREFIX!r}")
        return _answer(
            await _send_once(f"task/{body.task_id}", body.task_id, body, fields, services)
        )
    if idempotency_key is not None:
        task_id = services.ids.new(body.to)
        return _answer(await _send_once(f"idem/{idempotency_key}", task_id, body, fields, services))
    task = TaskMessage(task_id=services.ids.new(body.to), created_at=now, **fields)
    await services.broker.publish_task(task)
    return _answer(SendResponse(task_id=task.task_id))


def _moment(
    body: SendRequest, seconds_field: str, at_field: str, now: datetime, most_s: float
) -> tuple[datetime, str] | None:
    """A moment a send gives as seconds from now or as a time (neither: None), and the field
    that gave it; 422 beyond RELAY_MAX_DEADLINE_S."""
    seconds, at = getattr(body, seconds_field), getattr(body, at_field)
    if seconds is not None:
        moment, field = now + timedelta(seconds=seconds), seconds_field
    elif at is not None:
        moment, field = at, at_field
    else:
        return None
    if moment - now > timedelta(seconds=most_s):
        raise ApiError(422, f"{field}: at most {most_s:g} s ahead (RELAY_MAX_DEADLINE_S)")
    return moment, field


def _deadline(body: SendRequest, now: datetime, most_s: float) -> datetime | None:
    """The task's deadline (`ttl_s` from now, or as given)."""
    given = _moment(body, "ttl_s", "deadline", now, most_s)
    return given[0] if given is not None else None


def _not_before(
    body: SendRequest, now: datetime, most_s: float, deadline: datetime | None
) -> datetime | None:
    """When the task may start (`delay_s` from now, or as given; None: at once); 422 when not
    before the deadline (it could never start)."""
    given = _moment(body, "delay_s", "not_before", now, most_s)
    if given is None:
        return None
    not_before, field = given
    if deadline is not None and not_before >= deadline:
        raise ApiError(422, f"{field}: the task may start only after its deadline")
    return not_before if not_before > now else None


def _answer(model: BaseModel, *, exclude_none: bool = False) -> Response:
    """The answer as JSON, as the endpoint gives it (its response_model documents it; FastAPI
    would otherwise validate a returned model again)."""
    return Response(model.model_dump_json(exclude_none=exclude_none), media_type=JSON)


def _digest(text: str, prefix: str = "") -> str:
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:32]


async def _send_once(
    key: str, task_id: str, body: SendRequest, fields: dict[str, Any], services: Services
) -> SendResponse:
    """Publish the task of a client's key once: the same body again creates nothing new.

    The key is recorded before the publish; a send that got a 503 is published by its retry.
    """
    # Fields added since keys were first recorded count only when given, so that a send retried
    # across an upgrade still matches its key.
    unset_later = {name for name in _LATER_FIELDS if getattr(body, name) is None}
    sent = body.model_dump(mode="json", by_alias=True, exclude=unset_later)
    body_hash = _digest(json.dumps(sent, sort_keys=True), "")
    if not await services.send_keys.reserve(key, task_id, body_hash, utcnow(), body.to):
        known = await services.send_keys.find(key)
        if known is not None:
            if known.body_hash != body_hash:
                what = "task_id" if key.startswith("task/") else "Idempotency-Key"
                raise ApiError(409, f"this {what} was already sent with another body")
            if known.confirmed:
                return SendResponse(task_id=known.task_id)
            task_id = known.task_id  # recorded, never confirmed: publish it now
    task = TaskMessage(task_id=task_id, created_at=utcnow(), **fields)
    await services.broker.publish_task(task)
    await services.send_keys.confirm(key)
    return SendResponse(task_id=task_id)


async def _known(task_id: str, services: Services, *, reserved: bool = False) -> str:
    """The task's state; 'pending' if the bus issued it but the tracker has not seen it yet.

    `reserved`: a client-chosen id counts once its key is recorded, before RabbitMQ confirmed
    it (a child may call back before the API marks the key confirmed), for the grace period; a
    send refused with 503 and never retried does not stay open to callbacks. Raises 404 when
    the bus never issued the id.
    """
    state = await services.reader.task_state(task_id)
    if state is not None:
        return state
    return await _not_recorded_yet(task_id, services, reserved=reserved)


async def _not_recorded_yet(task_id: str, services: Services, *, reserved: bool = False) -> str:
    """'pending' for a task the tracker has not recorded (yet) that the bus issued; else 404."""
    issued = services.ids.issued_at(task_id)
    grace = timedelta(seconds=services.settings.pending_grace_seconds)
    if issued is not None and utcnow() - issued < grace:
        return "pending"
    key = await services.send_keys.find(f"task/{task_id}") if issued is None else None
    if key is not None and (key.confirmed or (reserved and utcnow() - key.created_at < grace)):
        return "pending"
    raise ApiError(404, "task not found")


@hand_read_router.post(
    "/callback",
    response_model=CallbackResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=hand_read.documented(
        CallbackRequest,
        {
            FIRST_CALLBACK_HEADER: (
                "`1`: the child never sent a callback for this task before this one.",
                None,
            )
        },
    ),
)
async def callback(request: Request) -> Response:
    """A child reports a task's outcome; 200 once the completion is durably on the bus.

    A completion the tracker already recorded is a duplicate. One still in flight is published
    again under the same event id, which the tracker records once. A child that says this is
    the task's first callback saves the lookup (were it wrong, only `duplicate` goes unsaid).
    """
    principal = await hand_read.caller(request, "callback")
    body = await hand_read.body(request, CallbackRequest)
    first = request.headers.get(FIRST_CALLBACK_HEADER) == "1"
    duplicate = await _accept_callback(principal, body, first, services_of(request))
    return _answer(CallbackResponse(duplicate=duplicate or None), exclude_none=True)


@hand_read_router.post(
    "/callbacks",
    response_model=CallbacksResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=hand_read.documented(CallbacksRequest),
)
async def callbacks(request: Request) -> Response:
    """Many callbacks in one request, each handled as POST /callback handles one; 200 with an
    answer per callback, in their order, each with the status /callback would have answered.

    The child's way: a request and its answer cost the API more than the callback itself, and
    the callbacks' events are published side by side, their confirms awaited together.
    """
    principal = await hand_read.caller(request, "callback")
    batch = await hand_read.body(request, CallbacksRequest)
    services = services_of(request)
    answers = await asyncio.gather(
        *(_batched_answer(principal, item, services) for item in batch.callbacks)
    )
    return _answer(CallbacksResponse(results=answers), exclude_none=True)


async def _batched_answer(
    principal: Principal, item: BatchedCallback, services: Services
) -> CallbackAnswer:
    """One callback of a batch: its answer, its failure answered as /callback would."""
    try:
        duplicate = await _accept_callback(principal, item.callback, item.first, services)
    except Exception as exc:  # each callback's failure is its own answer, as /callback's
        status, msg, _ = refusal_of(exc)
        metrics.CALLBACKS_RECEIVED.labels(str(status)).inc()
        return CallbackAnswer(code=status, status="error", msg=msg)
    metrics.CALLBACKS_RECEIVED.labels("accepted").inc()
    return CallbackAnswer(code=200, status="ok", duplicate=duplicate or None)


async def _accept_callback(
    principal: Principal, body: CallbackRequest, first: bool, services: Services
) -> bool:
    """Publish the callback's completion event, confirmed; True when it is a duplicate."""
    if services.ids.issued_at(body.task_id) is None:
        # 404 unless it is a client-chosen id being sent or sent
        await _known(body.task_id, services, reserved=True)
    await _check_pool(principal, body.task_id, services)
    event_id = callback_event_id(body.task_id)
    try:
        if not first and await services.reader.has_event(event_id):
            return True
    except DatabaseUnavailable:
        pass  # the database is down: publish anyway, the tracker keeps one completion

    # Every field of the callback is a field of its event, under the same name.
    event = Event(event_id=event_id, event="callback", ts=utcnow(), **dict(body))
    await services.broker.publish_event(event)
    return False


async def _check_pool(principal: Principal, task_id: str, services: Services) -> None:
    """403 unless the key may serve the pool the task was routed to."""
    if principal.pools is None:
        return
    if services.ids.issued_at(task_id) is not None:
        if any(services.ids.routed_to(task_id, pool) for pool in principal.pools):
            return
    else:  # a client-chosen id: the API recorded its pool before publishing it
        known = await services.send_keys.find(f"task/{task_id}")
        if known is not None and known.pool in principal.pools:
            return
        if known is None:  # a webhook delivery: the tracker recorded it before publishing it
            task = await services.reader.task(task_id)
            if task is not None and task["recipient"] in principal.pools:
                return
    raise ApiError(403, "Forbidden: this key may not call back tasks of that pool")


@router.post("/ack", response_model=Ok, responses=_ERRORS)
async def ack(body: AckRequest, services: ServicesDep, principal: AckKey) -> Ok:
    """Record that the master or a child saw a task's outcome."""
    await _known(body.task_id, services)
    event = Event(
        event_id=new_event_id(), event="ack", ts=utcnow(), task_id=body.task_id, ack_by=body.ack_by
    )
    await services.broker.publish_event(event)
    return Ok()


TaskIdPath = Annotated[str, Path(max_length=128)]
WaitQuery = Annotated[
    float | None,
    Query(
        ge=0,
        allow_inf_nan=False,
        description="Seconds to wait for the task to end (completed, failed, expired, canceled) "
        "or to wait for an answer (input_required) before answering; at most RELAY_MAX_WAIT_S. "
        "Answers at once when it has.",
    ),
]
_WAIT_DOC = (
    "Seconds to wait for an entry when there is none yet; at most RELAY_MAX_WAIT_S. Answers at "
    "once when there is one."
)


def _wait_s(wait: float | None, services: Services) -> float:
    """The seconds a read may wait (0: none); 422 beyond RELAY_MAX_WAIT_S."""
    most = services.settings.max_wait_s
    if wait is not None and wait > most:
        raise ApiError(400, f"invalid query parameter wait: at most {most:g} s (RELAY_MAX_WAIT_S)")
    return wait or 0.0


@router.get("/task-status/{task_id}", response_model=TaskStatusResponse, responses=_ERRORS)
async def task_status(
    task_id: TaskIdPath, services: ServicesDep, wait: WaitQuery = None
) -> TaskStatusResponse:
    """The task's state (seed); never 404 right after a 200 from send. With `wait`, answers
    when the task ends or asks a question, or with its state when the wait is up."""
    seconds = _wait_s(wait, services)

    async def read() -> str:
        return await _known(task_id, services)

    state = await services.commits.wait(task_id, seconds, read, lambda s: s in SETTLED_STATES)
    return TaskStatusResponse(task_id=task_id, task_status=state)


@router.get("/tasks/{task_id}", response_model=TaskResponse, responses=_ERRORS)
async def task_record(
    task_id: TaskIdPath,
    *,
    services: ServicesDep,
    request: Request,
    wait: WaitQuery = None,
    after_round: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_INPUT_ROUNDS,
            description="With `wait`: a question up to this round (one just answered) does "
            "not end the wait; only a later one, or the task's end, does.",
        ),
    ] = None,
    key: KeyHeader = None,
) -> TaskResponse:
    """The record of a task; with `wait`, once it ends or asks a question (or when the wait is
    up); `asking` is the question it waits on. Its payload, text, result, error and question
    only to its sender, its pool's key, the party asked and operators (or to anyone with
    RELAY_PUBLIC_TASKS); to others they are `withheld`."""
    seconds = _wait_s(wait, services)
    principal = await authenticate(services, request, key) if key is not None else None

    async def read() -> TaskResponse:
        return await _task_response(task_id, services, principal)

    def settled(task: TaskResponse) -> bool:
        if task.task_status != "input_required" or after_round is None:
            return task.task_status in SETTLED_STATES
        return task.asking is None or task.asking.round > after_round

    return await services.commits.wait(task_id, seconds, read, settled)


async def _task_response(
    task_id: str, services: Services, principal: Principal | None
) -> TaskResponse:
    row = await services.reader.task(task_id)
    if row is None:
        # Not the tracker's state read again: its commit may come between the two reads, and
        # a record of a final state without its fields (no result) would be answered.
        state: TaskState = await _not_recorded_yet(task_id, services)  # type: ignore[assignment]
        return TaskResponse(task_id=task_id, task_status=state)
    withheld = None
    if not visibility.sees_whole_task(principal, row, services.settings):
        withheld = [f for f in visibility.PRIVATE_TASK_FIELDS if row[f] is not None]
        row = {**row, **dict.fromkeys(withheld)}
    return TaskResponse(
        withheld=withheld or None,
        task_id=row["task_id"],
        from_=row["sender"],
        to=row["recipient"],
        type=row["type"],
        cmd=row["cmd"],
        payload=row["payload"],
        text=row["text"],
        conversation_id=row["conversation_id"],
        task_status=row["state"],
        attempts=row["attempts"],
        child_id=row["child_id"],
        result=row["result"],
        error=row["error"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        deadline=row["deadline"],
        not_before=row["not_before"],
        priority=row["priority"],
        progress=row["progress"],
        progress_note=row["progress_note"],
        lease_until=row["lease_until"],
        asking=_asking(row),
    )


def _asking(row: dict[str, Any]) -> Asking | None:
    """The question the task waits on (not the task it carries), while it waits."""
    asking = row["asking"]
    if asking is None or row["state"] != "input_required":
        return None
    return Asking(
        round=asking["round"], question=asking["question"], to=asking["to"],
        asked_at=asking["asked_at"],
    )  # fmt: skip


@router.post("/tasks/{task_id}/cancel", response_model=CancelResponse, responses=_ERRORS)
async def cancel(task_id: TaskIdPath, services: ServicesDep, principal: CancelKey) -> Response:
    """Cancel a task: after this 200 it never starts, and a handler running it is cancelled
    (RELAY docs/reliability.md, "Cancellation"); it ends `canceled`, unless it finished first.
    Its sender's key or an `admin` key; again: 200; a finished task: 409."""
    row = await services.reader.task(task_id)
    if row is None:
        await _known(task_id, services)  # 404 for an id the bus never issued
        if not _may_cancel(principal, None):
            raise ApiError(409, "task not recorded yet, so its sender is unknown: retry shortly")
    else:
        state = row["state"]
        if not _may_cancel(principal, row["sender"]):
            raise ApiError(403, "Forbidden: only the task's sender or an admin may cancel it")
        if state in FINAL_STATES and state != "canceled":
            raise ApiError(409, f"task already {state}")
    now = utcnow()
    # Recorded first: a child that (re)connects reads it there, whether or not it heard it.
    await services.cancels.record(task_id, principal.name, now)
    event = Event(
        event_id=cancel_event_id(task_id),
        event="cancel",
        ts=now,
        task_id=task_id,
        conversation_id=row["conversation_id"] if row is not None else None,
        canceled_by=principal.name,
    )
    await services.broker.publish_event(event)
    return _answer(CancelResponse(task_id=task_id))


@router.post("/tasks/{task_id}/input", response_model=InputResponse, responses=_ERRORS)
async def answer(
    task_id: TaskIdPath, body: InputRequest, services: ServicesDep, principal: AnswerKey
) -> Response:
    """Answer the question the task waits on (`input_required`): 200 once the answer is on the
    bus; the task goes back to its pool, and its handler runs again with every question and
    answer so far in `task.inputs`. The party asked, a key that sends as anyone, or an admin.
    A task not waiting for input: 409; a second answer: 409; the same answer again: 200."""
    as_another = body.from_ is not None and body.from_ != principal.name
    if as_another and not _may_answer_as_any(principal):
        raise ApiError(403, f"Forbidden: this key answers as {principal.name!r} only")
    # A key that sends as anyone answers for the party asked unless it names another.
    named = body.from_ or (None if principal.send_as_any else principal.name)
    row = await services.reader.task(task_id)
    if row is None:
        await _known(task_id, services)  # 404 for an id the bus never issued
        raise ApiError(409, "task is pending, not waiting for input")
    asking = row["asking"]
    if row["state"] != "input_required" or asking is None:
        last = row["input_round"]
        if last and await services.answers.is_recorded(task_id, last, named, body.answer):
            return _answer(InputResponse(task_id=task_id, round=last))  # a retry, applied
        raise ApiError(409, f"task is {row['state']}, not waiting for input")
    answered_by = named or asking["to"]
    if answered_by != asking["to"] and not _may_answer_as_any(principal):
        raise ApiError(403, f"Forbidden: the task waits for an answer from {asking['to']!r}")
    round_ = asking["round"]
    claim, by = await services.answers.claim(task_id, round_, answered_by, body.answer, utcnow())
    if claim is Claim.TAKEN:
        raise ApiError(409, f"question {round_} of this task was answered already, by {by!r}")
    event = Event(
        event_id=answer_event_id(task_id, round_),
        event="input",
        ts=utcnow(),
        task_id=task_id,
        conversation_id=row["conversation_id"],
        from_=answered_by,
        to=row["recipient"],
        round=round_,
        answer=body.answer,
    )
    await services.broker.publish_event(event)
    return _answer(InputResponse(task_id=task_id, round=round_))


def _may_answer_as_any(principal: Principal) -> bool:
    """An admin, or a key that sends as anyone (the master's): answers for any party asked."""
    return "admin" in principal.scopes or principal.send_as_any


@router.post("/tasks/{task_id}/ask", response_model=Ok, responses=_ERRORS)
async def ask(
    task_id: TaskIdPath, body: AskRequest, services: ServicesDep, principal: CallbackKey
) -> Ok:
    """A running handler asks a question, from a child that is not the bus's own (those
    publish it on the bus); 200 once it is on the bus. The task waits `input_required` for
    the answer of `to` (its sender by default); the child acks its delivery next, and the task
    comes back to the pool, with the answer in `inputs`, once answered."""
    if body.task.task_id != task_id:  # (409: the OpenAPI cannot say the two must match)
        raise ApiError(409, "task: not the message of this task (its task_id differs)")
    await _known(task_id, services)
    await _check_pool(principal, task_id, services)
    row = await services.reader.task(task_id)
    if row is None:
        raise ApiError(409, "task not recorded yet: retry shortly")
    if (body.task.to, body.task.from_) != (row["recipient"], row["sender"]):
        raise ApiError(409, "task: its from and to are not those the bus recorded")
    if row["state"] in FINAL_STATES:
        raise ApiError(409, f"task already {row['state']}")
    round_ = len(body.task.inputs or ()) + 1
    if round_ > MAX_INPUT_ROUNDS:
        raise ApiError(409, f"task asked {MAX_INPUT_ROUNDS} questions already: no more")
    event = Event(
        event_id=question_event_id(task_id, round_),
        event="input_required",
        ts=utcnow(),
        task_id=task_id,
        conversation_id=body.task.conversation_id,
        from_=body.task.to,
        to=body.to or body.task.from_,
        child_id=body.child_id,
        attempt=body.attempt,
        round=round_,
        question=body.question,
        task=body.task,
    )
    await services.broker.publish_event(event)
    return Ok()


@router.get("/cancels", response_model=CancelsResponse, responses=_ERRORS)
async def cancels(
    services: ServicesDep,
    _: CallbackKey,
    since: Annotated[RequestTimestamp, Query(description="RFC 3339; a child reads 7 days back")],
) -> Response:
    """The ids of the tasks canceled since `since`: what a child reads when it (re)connects."""
    task_ids = await services.cancels.since(since)
    return _answer(CancelsResponse(task_ids=task_ids))


def _may_cancel(principal: Principal, sender: str | None) -> bool:
    """An admin, a key that sends as anyone, or the task's sender (None: not known yet)."""
    if "admin" in principal.scopes or principal.send_as_any:
        return True
    return sender is not None and sender == principal.name


@router.post("/tasks/{task_id}/progress", response_model=Ok, responses=_ERRORS)
async def progress(
    task_id: TaskIdPath, body: ProgressRequest, services: ServicesDep, principal: CallbackKey
) -> Ok:
    """A running handler's progress, from a child that is not the bus's own (those publish it
    on the bus); the task's row keeps the last. At most one a second per task (else 429)."""
    await _known(task_id, services)
    await _check_pool(principal, task_id, services)
    if wait := await services.limits.progress.take(task_id):
        raise ApiError(
            429, "progress of this task reported too often: retry later", {"Retry-After": str(wait)}
        )
    event = Event(
        event_id=new_event_id(),
        event="progress",
        ts=utcnow(),
        task_id=task_id,
        child_id=body.child_id,
        attempt=body.attempt,
        progress=body.progress,
        note=body.note,
    )
    await services.broker.publish_event(event)
    return Ok()


LogId = Annotated[int, Field(ge=0, le=MAX_LOG_ID)]


class EntryQuery(BaseModel):
    """The filters of GET /logs and GET /stream."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    task_id: FilterText = None
    conversation_id: FilterText = None
    from_: FilterText = Field(default=None, alias="from")
    to: FilterText = None
    event: FilterText = None
    after: LogId | None = None


class LogQuery(EntryQuery):
    """The query of GET /logs."""

    #: Anything else is the contract's 400 "limit must be an integer from 1 to 1000" (errors.py).
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 100


async def _log_reader(
    services: ServicesDep, request: Request, key: KeyHeader = None
) -> Principal | None:
    """Who reads the log (entries carry payloads and user text): None when it is public (dev
    mode, RELAY_PUBLIC_LOGS), else the key's holder (401 without one)."""
    if visibility.logs_are_public(services.settings):
        return None
    return await authenticate(services, request, key)


LogReaderKey = Annotated[Principal | None, Depends(_log_reader)]


async def _check_entries(reader: Principal | None, q: EntryQuery, services: Services) -> None:
    """403 unless the key may read what the filters select (an operator's: anything)."""
    if reader is not None:
        await visibility.check_entries(
            reader, services.reader, sender=q.from_, recipient=q.to, task_id=q.task_id
        )


@router.get("/logs", response_model=LogsResponse, responses=_ERRORS)
async def logs(
    services: ServicesDep, q: Annotated[LogQuery, Query()], reader: LogReaderKey
) -> Response:
    """The last `limit` log entries, oldest first; or, with `after`, the next ones. An
    operator's key (`read`, `admin`) reads every entry; any other key its own (its name as
    `from` or `to`, or one of its tasks)."""
    await _check_entries(reader, q, services)
    where = q.model_dump(exclude={"from_", "to"})
    rows = await services.reader.logs(LogFilter(**where, sender=q.from_, recipient=q.to))
    # Up to 1000 entries: FastAPI would validate them again, then encode them with json.dumps.
    return _answer(LogsResponse(logs=[public_entry(r) for r in rows]))


_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "Server-Sent Events: each log entry as `data` (JSON, as in GET /logs), "
        "its log id as `id`; a comment line as keep-alive.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}


@router.get(
    "/stream",
    responses=_STREAM_DOC,
    response_class=Response,
)
async def stream(
    services: ServicesDep,
    q: Annotated[EntryQuery, Query()],
    reader: LogReaderKey,
    last_event_id: Annotated[LogId | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Every log entry passing the filters as it is committed, oldest first, each once.

    `Last-Event-ID` (what an EventSource sends when it reconnects), else `after`: first the
    entries after that id. Neither: from now on. A client that falls behind by more than
    RELAY_STREAM_BUFFER entries is disconnected; it reconnects with Last-Event-ID. Who reads
    what: as GET /logs.
    """
    await _check_entries(reader, q, services)
    settings = services.settings
    if services.commits.streams >= settings.max_streams:
        raise ApiError(503, "too many open streams on this API process: retry later")
    where = StreamFilter(
        task_id=q.task_id,
        conversation_id=q.conversation_id,
        sender=q.from_,
        recipient=q.to,
        event=q.event,
    )
    after = last_event_id if last_event_id is not None else q.after
    subscription = await services.commits.subscribe(where, after)

    async def events() -> AsyncIterator[bytes]:
        async for row in subscription.entries(settings.stream_keepalive_s):
            if row is None:
                yield format_sse_event(comment="keep-alive")
            else:
                data = orjson.dumps(public_entry(row)).decode()
                yield format_sse_event(data_str=data, id=str(row["id"]))

    return _Stream(subscription, events())


class _Stream(EventSourceResponse):
    """Server-Sent Events until the client goes, or lags so far that it is dropped (then the
    connection is cut, even while a write to it is stuck)."""

    def __init__(self, subscription: Subscription, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as streaming:

                async def cut_when_dropped() -> None:
                    await self.subscription.dropped.wait()
                    streaming.cancel_scope.cancel()

                streaming.start_soon(cut_when_dropped)
                await super().__call__(scope, receive, send)
                streaming.cancel_scope.cancel()
        finally:
            self.subscription.close()


NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]


class InboxQuery(BaseModel):
    """The query of GET /inbox/{name}."""

    model_config = ConfigDict(extra="forbid")

    after: LogId | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 100
    wait: Annotated[float | None, Field(ge=0, allow_inf_nan=False, description=_WAIT_DOC)] = None


def _may_use_inbox(principal: Principal, name: str, *scopes: str) -> None:
    """403 unless the key is `name`'s own, or has one of `scopes`."""
    if principal.name != name and not principal.scopes.intersection(scopes):
        raise ApiError(403, f"Forbidden: this key reads only its own inbox ({principal.name!r})")


@router.get("/inbox/{name}", response_model=InboxResponse, responses=_ERRORS)
async def inbox(
    name: NamePath, services: ServicesDep, principal: AnyKey, q: Annotated[InboxQuery, Query()]
) -> Response:
    """What is addressed to `name`: the messages sent to it and the outcomes of the tasks it
    sent, oldest first; after `after`, else after what it acknowledged. With `wait`, answers
    as soon as there is one. Its own key, or a `read` or `admin` key."""
    _may_use_inbox(principal, name, "read", "admin")
    seconds = _wait_s(q.wait, services)
    acked = await services.inbox_cursors.acked(name)
    start = q.after if q.after is not None else acked

    async def read() -> list[dict[str, Any]]:
        return await services.reader.inbox(name, start, q.limit)

    rows = await services.commits.wait(inbox_key(name), seconds, read, bool)
    return _answer(InboxResponse(name=name, entries=[public_entry(r) for r in rows], acked=acked))


@router.post("/inbox/{name}/ack", response_model=InboxAckResponse, responses=_ERRORS)
async def inbox_ack(
    name: NamePath, body: InboxAckRequest, services: ServicesDep, principal: AnyKey
) -> Response:
    """`name` read its inbox up to the log id `up_to`: a read without `after` starts after it.
    Acknowledging less than before changes nothing; beyond the newest log entry, up to it. Its
    own key, or an `admin` key."""
    _may_use_inbox(principal, name, "admin")
    # Never past the newest entry: what comes later is not read yet.
    up_to = min(body.up_to, await services.reader.last_log_id())
    acked = await services.inbox_cursors.ack(name, up_to, utcnow())
    return _answer(InboxAckResponse(acked=acked))
