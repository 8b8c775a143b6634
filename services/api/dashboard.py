"""The reads behind the dashboard (services/api/ui/): the task list, the overview, and whose key
signed in. Operators' reads (`read` or `admin` scope), except /me, which any key may ask."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from services.api.auth import Principal
from services.api.deps import AnyKey, OperatorKey, ServicesDep
from shared.contract import API_PREFIX, IDENT_PATTERN, MAX_LIMIT, NAME_PATTERN
from shared.ids import utcnow
from shared.readmodel import TaskFilter
from shared.schemas import (
    ErrorResponse,
    KeyInfo,
    NextPage,
    OverviewResponse,
    PoolActivity,
    QueueDepths,
    RecentFailure,
    RequestTimestamp,
    TaskListResponse,
    TaskState,
    TaskSummary,
    TrackerDepths,
)

router = APIRouter(prefix=API_PREFIX, tags=["dashboard"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 422, 429, 503)
}
#: The window of the overview's counts of tasks sent, ended and failed.
LAST_MINUTE = timedelta(seconds=60)
#: How many of the last failures the overview shows.
RECENT_FAILURES = 8
#: A list row carries this much of a task's error.
ERROR_PREVIEW = 300


class TaskListQuery(BaseModel):
    """The filters of GET /tasks; they combine (all must hold)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    state: TaskState | None = None
    pool: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None
    from_: Annotated[str | None, Field(alias="from", pattern=NAME_PATTERN)] = None
    cmd: Annotated[str | None, Field(max_length=128)] = None
    conversation_id: Annotated[str | None, Field(max_length=128)] = None
    #: Sent at or after this time.
    since: RequestTimestamp | None = None
    #: Sent before this time (the next page: its `next_page.before`).
    before: RequestTimestamp | None = None
    #: With `before`, the tasks sent at `before` with an id sorting before this one are in too:
    #: where a page ended (`next_page.before_id`). Alone, it changes nothing.
    before_id: Annotated[str | None, Field(pattern=IDENT_PATTERN)] = None
    #: Anything else is the contract's 400 "limit must be an integer from 1 to 1000" (errors.py).
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 50


@router.get("/tasks", response_model=TaskListResponse, responses=_ERRORS)
async def list_tasks(
    services: ServicesDep, q: Annotated[TaskListQuery, Query()], principal: OperatorKey
) -> TaskListResponse:
    """Tasks newest first, filtered; the next page: the same query with `next_page`'s
    `before` and `before_id`. For operators' keys (`read`, `admin`)."""
    where = TaskFilter(
        limit=q.limit,
        state=q.state,
        pool=q.pool,
        sender=q.from_,
        cmd=q.cmd,
        conversation_id=q.conversation_id,
        since=q.since,
        before=q.before,
        before_id=q.before_id,
    )
    rows = await services.reader.tasks(where)
    next_page = None
    if len(rows) == q.limit:
        last = rows[-1]
        next_page = NextPage(before=last["created_at"], before_id=last["task_id"])
    return TaskListResponse(tasks=[_summary(row) for row in rows], next_page=next_page)


def _summary(row: dict[str, Any]) -> TaskSummary:
    error = row["error"]
    return TaskSummary(
        task_id=row["task_id"],
        from_=row["sender"],
        to=row["recipient"],
        cmd=row["cmd"],
        conversation_id=row["conversation_id"],
        task_status=row["state"],
        attempts=row["attempts"],
        child_id=row["child_id"],
        priority=row["priority"],
        progress=row["progress"],
        error=error[:ERROR_PREVIEW] if error is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
    )


@router.get("/overview", response_model=OverviewResponse, responses=_ERRORS)
async def overview(services: ServicesDep, principal: OperatorKey) -> OverviewResponse:
    """Per pool: its queues (from RabbitMQ's management API, when it can be read) and the
    tasks sent, ended and failed in the last minute; the tracker's lag; how many tasks wait in
    each unfinished state; the last failures. For operators' keys (`read`, `admin`)."""
    now = utcnow()
    activity = await services.reader.activity(now - LAST_MINUTE)
    unfinished = await services.reader.unfinished()
    failures = await services.reader.recent_failures(RECENT_FAILURES)
    queues, queues_error = await services.queue_depths.read()
    pools: dict[str, PoolActivity] = {}
    for pool_queues in queues.pools if queues is not None else []:
        pools[pool_queues.pool] = PoolActivity(
            pool=pool_queues.pool,
            queues=QueueDepths(**pool_queues.counts(), retrying=pool_queues.retrying,
                               high=pool_queues.high),
        )  # fmt: skip
    for pool in await services.reader.pools():  # the quiet ones too
        pools.setdefault(pool, PoolActivity(pool=pool))
    for pool, counts in activity.items():
        row = pools.setdefault(pool, PoolActivity(pool=pool))
        row.sent_last_minute = counts.get("sent", 0)
        row.ended_last_minute = sum(n for state, n in counts.items() if state != "sent")
        row.failed_last_minute = counts.get("failed", 0)
    tracker = None
    if queues is not None:
        t = queues.tracker
        tracker = TrackerDepths(lag=t.lag, consumers=t.consumers, parked=t.parked)
    return OverviewResponse(
        measured_at=now,
        pools=[pools[name] for name in sorted(pools)],
        tracker=tracker,
        queues_error=queues_error,
        unfinished=unfinished,
        recent_failures=[
            RecentFailure(
                task_id=f["task_id"], to=f["recipient"], cmd=f["cmd"], attempts=f["attempts"],
                error=(f["error"] or "")[:ERROR_PREVIEW] or None, completed_at=f["completed_at"],
            )
            for f in failures
        ],
    )  # fmt: skip


@router.get("/me", response_model=KeyInfo, responses=_ERRORS)
async def me(principal: AnyKey) -> KeyInfo:
    """Whose key this is and its scopes (the dashboard's sign-in asks it)."""
    return key_info(principal)


def key_info(principal: Principal) -> KeyInfo:
    pools = sorted(principal.pools) if principal.pools is not None else None
    return KeyInfo(
        name=principal.name,
        scopes=sorted(principal.scopes),
        pools=pools,
        send_as_any=principal.send_as_any,
    )
