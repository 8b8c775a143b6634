"""The read model: every query over the tracker's tables, for every reader (API, CLI, tracker).

The tracker writes these tables (services/tracker/store.py); nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, and_, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import connection
from shared.ids import utc_iso
from shared.models import LogEntry, Task

_TASKS = Task.__table__  # type: ignore[attr-defined]
_LOG = LogEntry.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LogFilter:
    """The filters of GET /logs. `recipient`: the entries sent to it, and the outcomes of the
    tasks it sent (what is addressed to it)."""

    limit: int = 100
    task_id: str | None = None
    conversation_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    event: str | None = None
    after: int | None = None


@dataclass(frozen=True)
class TaskFilter:
    """The filters of GET /tasks (the dashboard's table): sent at or after `since`, before
    `before` (and at `before` with an id before `before_id`: where the previous page ended)."""

    limit: int = 50
    state: str | None = None
    pool: str | None = None
    sender: str | None = None
    cmd: str | None = None
    conversation_id: str | None = None
    since: datetime | None = None
    before: datetime | None = None
    before_id: str | None = None


#: What a row of the task list holds (not the payload, text or result: a page stays small).
_SUMMARY = (
    "task_id", "sender", "recipient", "cmd", "conversation_id", "state", "not_before",
    "attempts", "child_id", "priority", "progress", "error", "created_at", "updated_at",
    "completed_at",
)  # fmt: skip
#: The states a task leaves again (the rest are final).
UNFINISHED_STATES = ("scheduled", "pending", "processing", "retrying", "input_required")


class Reader:
    """Queries over the tracker's tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def task(self, task_id: str) -> dict[str, Any] | None:
        async with connection(self.engine) as conn:
            row = (await conn.execute(select(_TASKS).where(_TASKS.c.task_id == task_id))).first()
        if row is None:
            return None
        task = dict(row._mapping)
        task["state"] = state_now(task["state"], task["not_before"])
        return task

    async def task_state(self, task_id: str) -> str | None:
        query = select(_TASKS.c.state, _TASKS.c.not_before).where(_TASKS.c.task_id == task_id)
        async with connection(self.engine) as conn:
            row = (await conn.execute(query)).first()
        return state_now(row.state, row.not_before) if row is not None else None

    async def logs(self, f: LogFilter) -> list[dict[str, Any]]:
        """Entries matching `f`, oldest first: the last `limit`, or the next ones after `after`."""
        async with connection(self.engine) as conn:
            rows = [dict(r._mapping) for r in await conn.execute(logs_query(f))]
        if f.after is None:
            rows.reverse()
        return rows

    async def last_log_id(self) -> int:
        """The id of the newest log entry (0: none)."""
        async with connection(self.engine) as conn:
            return int((await conn.execute(select(func.max(_LOG.c.id)))).scalar() or 0)

    async def entries_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` log entries after the id `after`, oldest first, each with the
        conversation and sender of its task and the id of its task's outcome (`task_…`): what
        a stream filters on."""
        query = (
            select(
                _LOG,
                _TASKS.c.conversation_id.label("task_conversation_id"),
                _TASKS.c.sender.label("task_sender"),
                _TASKS.c.outcome_id.label("task_outcome_id"),
            )
            .outerjoin(_TASKS, _LOG.c.task_id == _TASKS.c.task_id)
            .where(_LOG.c.id > after)
            .order_by(_LOG.c.id.asc())
            .limit(limit)
        )
        async with connection(self.engine) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def inbox(self, name: str, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` entries of `name`'s inbox after the id `after`, oldest first: the
        messages sent to it and the outcomes of the tasks it sent."""
        query = select(_LOG).where(_LOG.c.id.in_(_inbox_ids(name, after, limit)))
        async with connection(self.engine) as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query.order_by(_LOG.c.id))]
        return rows

    async def has_event(self, event_id: str) -> bool:
        """Whether the tracker recorded this event."""
        query = select(_LOG.c.id).where(_LOG.c.event_id == event_id)
        async with connection(self.engine) as conn:
            return (await conn.execute(query)).first() is not None

    async def pools(self) -> list[str]:
        """Every pool a task was ever sent to."""
        async with connection(self.engine) as conn:
            return sorted(str(p) for p in (await conn.execute(pools_query())).scalars())

    async def tasks(self, f: TaskFilter) -> list[dict[str, Any]]:
        """Up to `limit` tasks matching `f`, newest first (each with the state readers see)."""
        async with connection(self.engine) as conn:
            rows = [dict(r._mapping) for r in await conn.execute(tasks_query(f))]
        for row in rows:
            row["state"] = state_now(row["state"], row["not_before"])
        return rows

    async def activity(self, since: datetime) -> dict[str, dict[str, int]]:
        """Per pool: tasks sent since `since` (`sent`), and those that ended since, by their
        final state. Two index range scans over the last minute's rows (ix_tasks_created,
        ix_tasks_completed), however many tasks the database holds."""
        sent = (
            select(_TASKS.c.recipient, func.count())
            .where(_TASKS.c.created_at >= since, _TASKS.c.type == "task")
            .group_by(_TASKS.c.recipient)
        )
        ended = (
            select(_TASKS.c.recipient, _TASKS.c.state, func.count())
            .where(_TASKS.c.completed_at >= since)
            .group_by(_TASKS.c.recipient, _TASKS.c.state)
        )
        pools: dict[str, dict[str, int]] = {}
        async with connection(self.engine) as conn:
            for pool, count in await conn.execute(sent):
                if pool is not None:
                    pools.setdefault(pool, {})["sent"] = count
            for pool, state, count in await conn.execute(ended):
                if pool is not None:
                    pools.setdefault(pool, {})[state] = count
        return pools

    async def unfinished(self) -> dict[str, int]:
        """How many tasks are in each unfinished state (ix_tasks_state_created: only those
        rows are read)."""
        now = datetime.now(UTC)
        due = and_(_TASKS.c.state == "scheduled", _TASKS.c.not_before <= now)
        query = (
            select(_TASKS.c.state, due.label("due"), func.count())
            .where(_TASKS.c.state.in_(UNFINISHED_STATES))
            .group_by(_TASKS.c.state, "due")
        )
        counts = dict.fromkeys(UNFINISHED_STATES, 0)
        async with connection(self.engine) as conn:
            for state, is_due, count in await conn.execute(query):
                counts["pending" if is_due else state] += count
        return counts

    async def recent_failures(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` tasks that failed, newest first (ix_tasks_state_updated)."""
        query = (
            select(*(_TASKS.c[c] for c in ("task_id", "recipient", "cmd", "attempts", "error")),
                   _TASKS.c.completed_at)
            .where(_TASKS.c.state == "failed")
            .order_by(_TASKS.c.updated_at.desc())
            .limit(limit)
        )  # fmt: skip
        async with connection(self.engine) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def ping(self) -> None:
        async with connection(self.engine) as conn:
            await conn.execute(select(1))


def public_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A log entry as readers get it (GET /logs, the stream, an inbox, a webhook): its columns
    under the contract's names, then the event's other fields; no nulls."""
    entry: dict[str, Any] = {
        "id": row["id"],
        "event": row["event"],
        "ts": utc_iso(row["ts"]),
        "task_id": row["task_id"],
        "conversation_id": row["conversation_id"],
        "from": row["sender"],
        "to": row["recipient"],
    }
    for key, value in (row["data"] or {}).items():
        entry.setdefault(key, value)
    return {k: v for k, v in entry.items() if v is not None}


def state_now(state: str, not_before: datetime | None) -> str:
    """A task's state as readers see it: a `scheduled` task whose time has come is `pending`
    (it waits for a child now; the tracker records no event for the moment it became due)."""
    if state == "scheduled" and (not_before is None or not_before <= datetime.now(UTC)):
        return "pending"
    return state


def tasks_query(f: TaskFilter) -> Select[Any]:
    """GET /tasks: newest first. Each filter has an index led by its column and followed by
    created_at (docs/operations.md shows the plans at a million tasks), so a page reads about
    `limit` rows whichever filter picks them."""
    columns = [_TASKS.c[name] for name in _SUMMARY]
    created = _TASKS.c.created_at
    where: list[ColumnElement[bool]] = []
    if f.state == "pending":  # with the scheduled tasks whose time has come (state_now)
        now = datetime.now(UTC)
        where.append(_TASKS.c.state.in_(("pending", "scheduled")))
        where.append(or_(_TASKS.c.not_before.is_(None), _TASKS.c.not_before <= now))
    elif f.state == "scheduled":
        where += [_TASKS.c.state == "scheduled", _TASKS.c.not_before > datetime.now(UTC)]
    elif f.state is not None:
        where.append(_TASKS.c.state == f.state)
    for column, value in (
        (_TASKS.c.recipient, f.pool),
        (_TASKS.c.sender, f.sender),
        (_TASKS.c.cmd, f.cmd),
        (_TASKS.c.conversation_id, f.conversation_id),
    ):
        if value is not None:
            where.append(column == value)
    if f.since is not None:
        where.append(created >= f.since)
    if f.before is not None and f.before_id is not None:
        # `created <= before` bounds the index scan; the rest breaks ties within one timestamp.
        where += [created <= f.before, or_(created < f.before, _TASKS.c.task_id < f.before_id)]
    elif f.before is not None:
        where.append(created < f.before)
    order = (created.desc(), _TASKS.c.task_id.desc())
    return select(*columns).where(*where).order_by(*order).limit(f.limit)


def logs_query(f: LogFilter) -> Select[Any]:
    """GET /logs: newest first up to `limit`, or with `after` the next `limit` oldest first."""
    where: list[ColumnElement[bool]] = []
    if f.task_id is not None:
        where.append(_LOG.c.task_id == f.task_id)
    if f.sender is not None:
        where.append(_LOG.c.sender == f.sender)
    if f.event is not None:
        where.append(_LOG.c.event == f.event)
    if f.after is not None:
        where.append(_LOG.c.id > f.after)
    order = _LOG.c.id.asc() if f.after is not None else _LOG.c.id.desc()
    newest = f.after is None
    if f.recipient is not None:
        # Limited here only when nothing narrows it further.
        limit = f.limit if f.conversation_id is None else None
        where = [_LOG.c.id.in_(_addressed_ids(f.recipient, where, newest, limit))]
    if f.conversation_id is not None:
        where = [_LOG.c.id.in_(_conversation_ids(f.conversation_id, where, newest, f.limit))]
    return select(_LOG).where(*where).order_by(order).limit(f.limit)


def _outcome_ids(sender: str) -> Select[Any]:
    """The log ids of the outcomes of the tasks `sender` sent (ix_tasks_sender_outcome)."""
    return select(_TASKS.c.outcome_id).where(
        _TASKS.c.sender == sender, _TASKS.c.outcome_id.is_not(None)
    )


def _addressed_ids(
    name: str, where: list[ColumnElement[bool]], newest: bool, limit: int | None
) -> Select[Any]:
    """Ids of the entries addressed to `name` matching `where`: those sent to it, and the
    outcomes of the tasks it sent; the first or last `limit` (None: all). Two index lookups,
    as for a conversation."""
    sent_to = select(_LOG.c.id).where(_LOG.c.recipient == name, *where)
    outcomes = select(_LOG.c.id).where(_LOG.c.id.in_(_outcome_ids(name)), *where)
    ids = union(sent_to, outcomes).subquery("addressed")
    query = select(ids.c.id)
    if limit is None:
        return query
    return query.order_by(ids.c.id.desc() if newest else ids.c.id.asc()).limit(limit)


#: The entries addressed to a party that are its inbox's: a message, a question to answer.
INBOX_EVENTS = ("message", "input_required")


def _inbox_ids(name: str, after: int, limit: int) -> Select[Any]:
    """Ids of `name`'s inbox after `after`: messages and questions sent to it, outcomes of its
    tasks."""
    messages = select(_LOG.c.id).where(
        and_(_LOG.c.recipient == name, _LOG.c.event.in_(INBOX_EVENTS), _LOG.c.id > after)
    )
    outcomes = select(_LOG.c.id).where(_LOG.c.id.in_(_outcome_ids(name)), _LOG.c.id > after)
    ids = union(messages, outcomes).subquery("inbox")
    return select(ids.c.id).order_by(ids.c.id.asc()).limit(limit)


def _conversation_ids(
    conversation_id: str, where: list[ColumnElement[bool]], newest: bool, limit: int
) -> Select[Any]:
    """Ids of the conversation's entries matching `where`: the first or last `limit`.

    An event of a task (callback, ack) belongs to the task's conversation even when it does not
    carry the conversation id itself. Two index lookups (the entries that carry it, the entries
    of its tasks) rather than one OR, which PostgreSQL can only answer by reading the whole log.
    """
    own = select(_LOG.c.id).where(_LOG.c.conversation_id == conversation_id, *where)
    of_tasks = (
        select(_LOG.c.id)
        .join(_TASKS, _LOG.c.task_id == _TASKS.c.task_id)
        .where(_TASKS.c.conversation_id == conversation_id, *where)
    )
    ids = union(own, of_tasks).subquery("in_conversation")
    return select(ids.c.id).order_by(ids.c.id.desc() if newest else ids.c.id.asc()).limit(limit)


def pools_query() -> Select[Any]:
    """Every pool a task was ever sent to, in no particular order.

    A loose index scan of ix_tasks_recipient: each step asks the index for the next pool after
    the last one, so it reads a few pages per pool rather than every task.
    """

    def next_pool(after: ColumnElement[Any] | None) -> ScalarSelect[Any]:
        query = select(func.min(_TASKS.c.recipient)).where(
            _TASKS.c.type == "task", _TASKS.c.recipient.is_not(None)
        )
        if after is not None:
            query = query.where(_TASKS.c.recipient > after)
        return query.scalar_subquery()

    pools = select(next_pool(None).label("pool")).cte("pools", recursive=True)
    pools = pools.union_all(select(next_pool(pools.c.pool)).where(pools.c.pool.is_not(None)))
    return select(pools.c.pool).where(pools.c.pool.is_not(None))
