"""What the API reads from (and, for client-chosen task ids, writes to) the database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.errors import DatabaseUnavailable
from shared.models import LogEntry, SendKey, Task

_TASKS = Task.__table__  # type: ignore[attr-defined]
_LOG = LogEntry.__table__  # type: ignore[attr-defined]
_KEYS = SendKey.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SendKeyRow:
    """A recorded send key: the task it names, the body's hash, whether RabbitMQ confirmed."""

    task_id: str
    body_hash: str
    confirmed: bool
    pool: str | None


@dataclass(frozen=True)
class LogFilter:
    """The filters of GET /logs."""

    limit: int = 100
    task_id: str | None = None
    conversation_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    event: str | None = None
    after: int | None = None


class Reader:
    """Queries over the tracker's tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @contextlib.asynccontextmanager
    async def _conn(self, write: bool = False) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(f"database error: {exc.__class__.__name__}") from exc

    async def task(self, task_id: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = (await conn.execute(select(_TASKS).where(_TASKS.c.task_id == task_id))).first()
        return dict(row._mapping) if row is not None else None

    async def task_state(self, task_id: str) -> str | None:
        async with self._conn() as conn:
            state: str | None = (
                await conn.execute(select(_TASKS.c.state).where(_TASKS.c.task_id == task_id))
            ).scalar_one_or_none()
        return state

    async def send_key(self, key: str) -> SendKeyRow | None:
        """What a client's send key was first used for, if it ever was."""
        query = select(_KEYS.c.task_id, _KEYS.c.body_hash, _KEYS.c.confirmed, _KEYS.c.pool).where(
            _KEYS.c.key == key
        )
        async with self._conn() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return SendKeyRow(row.task_id, row.body_hash, row.confirmed, row.pool)

    async def reserve_send_key(
        self, key: str, task_id: str, body_hash: str, now: datetime, pool: str | None = None
    ) -> bool:
        """Record a client's send key; False if it was recorded already."""
        stmt = (
            self._insert(_KEYS)
            .values(
                key=key,
                task_id=task_id,
                body_hash=body_hash,
                confirmed=False,
                created_at=now,
                pool=pool,
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(_KEYS.c.key)
        )
        async with self._conn(write=True) as conn:
            inserted = (await conn.execute(stmt)).first()
        return inserted is not None

    async def confirm_send_key(self, key: str) -> None:
        async with self._conn(write=True) as conn:
            await conn.execute(update(_KEYS).where(_KEYS.c.key == key).values(confirmed=True))

    async def logs(self, f: LogFilter) -> list[dict[str, Any]]:
        """Entries matching `f`, oldest first: the last `limit`, or the next ones after `after`."""
        query: Select[Any] = select(_LOG)
        if f.task_id is not None:
            query = query.where(_LOG.c.task_id == f.task_id)
        if f.conversation_id is not None:
            # An event of a task (processing, callback) belongs to the task's conversation
            # even when it does not carry the conversation id itself.
            in_conversation = select(_TASKS.c.task_id).where(
                _TASKS.c.conversation_id == f.conversation_id
            )
            query = query.where(
                or_(
                    _LOG.c.conversation_id == f.conversation_id, _LOG.c.task_id.in_(in_conversation)
                )
            )
        if f.sender is not None:
            query = query.where(_LOG.c.sender == f.sender)
        if f.recipient is not None:
            query = query.where(_LOG.c.recipient == f.recipient)
        if f.event is not None:
            query = query.where(_LOG.c.event == f.event)
        if f.after is not None:
            query = query.where(_LOG.c.id > f.after).order_by(_LOG.c.id.asc()).limit(f.limit)
        else:
            query = query.order_by(_LOG.c.id.desc()).limit(f.limit)
        async with self._conn() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
        if f.after is None:
            rows.reverse()
        return rows

    async def has_event(self, event_id: str) -> bool:
        """Whether the tracker recorded this event."""
        query = select(_LOG.c.id).where(_LOG.c.event_id == event_id)
        async with self._conn() as conn:
            return (await conn.execute(query)).first() is not None

    async def pools(self) -> list[str]:
        """Every pool a task was ever sent to."""
        query = (
            select(_TASKS.c.recipient)
            .where(_TASKS.c.type == "task", _TASKS.c.recipient.is_not(None))
            .distinct()
        )
        async with self._conn() as conn:
            return sorted(str(p) for p in (await conn.execute(query)).scalars())

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.execute(select(1))
