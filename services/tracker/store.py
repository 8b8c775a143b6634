"""Writing a batch of entries to the database in one transaction."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, String, Table, TextClause, bindparam, cast, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.tracker.lifecycle import Entry, TaskRow, apply, resumed, with_outcome, withdraws
from services.tracker.outbox import answered_row_id, outbox_row
from services.tracker.webhooks import delivery_for
from shared.db import lock_for_transaction
from shared.errors import DatabaseUnavailable
from shared.ids import utcnow
from shared.models import LogEntry, Task, TaskOutbox
from shared.readmodel import INBOX_EVENTS
from shared.schemas import TaskMessage

log = logging.getLogger(__name__)

_LOG = LogEntry.__table__  # type: ignore[attr-defined]
_TASKS = Task.__table__  # type: ignore[attr-defined]
_OUTBOX = TaskOutbox.__table__  # type: ignore[attr-defined]
_TASK_COLUMNS = [f.name for f in dataclasses.fields(TaskRow)]


#: Held by a batch's transaction (PostgreSQL), so that two trackers on one database (one
#: taking the queue over while the other's batch is still being written) write one at a time:
#: each reads the rows as the other left them, and log ids grow in commit order, which the
#: API's streams rely on (services/api/commits.py).
BATCH_LOCK = "convbus:tracker-batch"


class BadBatch(Exception):
    """The database refused the batch for its content, not for being unreachable."""


def _is_unavailable(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclasses.dataclass(frozen=True)
class Committed:
    """What one commit recorded (what the API's waits and streams are told)."""

    #: The highest log id committed. Log ids grow in commit order: one batch is written at a
    #: time, whatever the number of trackers (BATCH_LOCK).
    last_id: int
    #: The tasks whose row changed.
    task_ids: list[str]
    #: The parties whose inbox got an entry: a message's recipient, an ended task's sender.
    inboxes: list[str]


#: Told after each commit that recorded new entries.
OnCommit = Callable[[Committed], Awaitable[None]]


@dataclasses.dataclass
class _Applied:
    """What applying entries to their tasks' rows did."""

    #: The tasks whose row changed.
    changed: list[str] = dataclasses.field(default_factory=list)
    #: The senders of the tasks that ended.
    ended: set[str] = dataclasses.field(default_factory=set)
    #: The webhook deliveries the changes call for.
    deliveries: list[TaskMessage] = dataclasses.field(default_factory=list)
    #: The outbox's rows of the tasks answered (each goes back to its pool).
    answered: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The tasks withdrawn (their rows and log entries go).
    withdrawn: set[str] = dataclasses.field(default_factory=set)

    def merge(self, other: _Applied) -> None:
        self.changed += other.changed
        self.ended |= other.ended
        self.deliveries += other.deliveries
        self.answered += other.answered
        self.withdrawn |= other.withdrawn


class Store:
    """Records entries and applies them to task rows, one transaction per batch."""

    def __init__(self, engine: AsyncEngine, on_commit: OnCommit | None = None) -> None:
        self.engine = engine
        self.on_commit = on_commit
        #: Set when a commit put tasks in the outbox (the tracker then publishes them).
        self.outbox_filled = False
        self._pg = engine.dialect.name == "postgresql"

    async def ping(self) -> None:
        """Raises DatabaseUnavailable unless the database answers."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(1))
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc.__class__.__name__}") from exc

    async def write(self, entries: Sequence[Entry]) -> int:
        """Record `entries` (duplicates by event id are ignored); how many were new.

        Raises DatabaseUnavailable when the database cannot be reached (retry the batch later)
        and BadBatch when it refused the content (write the entries one by one to find it).
        """
        fresh: list[Entry] = []
        new_ids: dict[str, int] = {}
        applied = _Applied()
        try:
            async with self.engine.begin() as conn:
                await lock_for_transaction(conn, BATCH_LOCK)
                for part in _parts(entries):
                    unique: dict[str, Entry] = {}
                    for entry in part:
                        unique.setdefault(entry.event_id, entry)
                    if not unique:
                        continue
                    part_ids = await self._insert_log(conn, unique.values())
                    part_fresh = [e for e in unique.values() if e.event_id in part_ids]
                    part_applied = await self._apply_to_tasks(conn, part_fresh, part_ids)
                    if part_applied.deliveries:
                        await self._record_deliveries(conn, part_applied, part_ids)
                    if part_applied.answered:
                        await conn.execute(_OUTBOX.insert(), part_applied.answered)
                    fresh += part_fresh
                    new_ids.update(part_ids)
                    applied.merge(part_applied)
        except SQLAlchemyError as exc:
            if _is_unavailable(exc):
                raise DatabaseUnavailable(
                    f"database unreachable: {exc.__class__.__name__}"
                ) from exc
            raise BadBatch(str(exc)) from exc
        except (ValueError, OverflowError) as exc:  # a value the driver cannot bind
            raise BadBatch(f"{exc.__class__.__name__}: {exc}") from exc
        except OSError as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc!r}") from exc
        if applied.deliveries or applied.answered:
            self.outbox_filled = True
        if fresh and self.on_commit is not None:
            messaged = {e.recipient for e in fresh if e.event in INBOX_EVENTS and e.recipient}
            inboxes = sorted(messaged | applied.ended)
            await self.on_commit(Committed(max(new_ids.values()), applied.changed, inboxes))
        return len(fresh)

    async def _record_deliveries(
        self, conn: AsyncConnection, applied: _Applied, log_ids: dict[str, int]
    ) -> None:
        """Record the deliveries as tasks (their send, their row) and in the outbox, in the
        transaction of the changes they report: a callback of a delivery finds it recorded."""
        sends = [Entry.from_task(d) for d in applied.deliveries]
        new_ids = await self._insert_log(conn, sends)
        own = await self._apply_to_tasks(conn, [e for e in sends if e.event_id in new_ids], new_ids)
        log_ids.update(new_ids)
        applied.changed += own.changed
        now = utcnow()
        rows = [outbox_row(d.task_id, d, now) for d in applied.deliveries if d.task_id in new_ids]
        if rows:
            await conn.execute(_OUTBOX.insert(), rows)

    async def _insert_log(self, conn: AsyncConnection, entries: Iterable[Entry]) -> dict[str, int]:
        """Insert the entries not recorded yet; the log id of each, by event id."""
        rows = [
            {
                "event_id": e.event_id,
                "event": e.event,
                "ts": e.ts,
                "task_id": e.task_id,
                "conversation_id": e.conversation_id,
                "sender": e.sender,
                "recipient": e.recipient,
                "data": e.data,
            }
            for e in entries
        ]
        if self._pg:
            result = await conn.execute(_PG_INSERT_LOG, {"rows": _json(rows)})
        else:
            stmt = (
                sqlite.insert(_LOG)
                .on_conflict_do_nothing(index_elements=["event_id"])
                .returning(_LOG.c.event_id, _LOG.c.id)
            )
            result = await conn.execute(stmt, rows)
        return {row.event_id: row.id for row in result}

    async def _apply_to_tasks(
        self, conn: AsyncConnection, entries: list[Entry], log_ids: dict[str, int]
    ) -> _Applied:
        """Apply the entries to their tasks' rows (each keeps the log id of its outcome)."""
        applied = _Applied()
        task_ids = sorted({e.task_id for e in entries if e.task_id is not None})
        if not task_ids:
            return applied
        if self._pg:
            found = await conn.execute(_PG_SELECT_TASKS, {"ids": _json(task_ids)})
        else:
            found = await conn.execute(select(_TASKS).where(_TASKS.c.task_id.in_(task_ids)))
        before: dict[str, TaskRow] = {
            row.task_id: TaskRow(**{c: getattr(row, c) for c in _TASK_COLUMNS}) for row in found
        }
        after = dict(before)
        for entry in entries:
            if entry.task_id is None:
                continue
            old = after.get(entry.task_id)
            if withdraws(old, entry):
                del after[entry.task_id]
                applied.withdrawn.add(entry.task_id)
                continue
            new = apply(old, entry)
            if new is not None:
                log_id = log_ids[entry.event_id]
                after[entry.task_id] = with_outcome(old, new, log_id)
                if (delivery := delivery_for(old, new, entry, log_id)) is not None:
                    applied.deliveries.append(delivery)
                if (answered := resumed(old, new, entry)) is not None:
                    task, attempt = answered
                    row_id = answered_row_id(task.task_id, len(task.inputs or ()))
                    applied.answered.append(outbox_row(row_id, task, utcnow(), attempt))
        applied.ended = {
            r.sender for tid, r in after.items() if r.outcome_id is not None and r.sender
            and (tid not in before or before[tid].outcome_id != r.outcome_id)
        }  # fmt: skip
        # One upsert for new and changed rows alike (an executemany of updates costs a round
        # trip per row). It overwrites what it read in this transaction: right since no other
        # batch writes meanwhile (BATCH_LOCK; on SQLite, the database's one write lock).
        changed = [_columns(r) for tid, r in after.items() if before.get(tid) != r]
        if applied.withdrawn:
            await self._forget(conn, applied.withdrawn)
            applied.changed = sorted(applied.withdrawn)
        if not changed:
            return applied
        if self._pg:
            await conn.execute(_PG_UPSERT_TASKS, {"rows": _json(changed)})
        else:
            stmt = sqlite.insert(_TASKS)
            stmt = stmt.on_conflict_do_update(
                index_elements=["task_id"],
                set_={c: stmt.excluded[c] for c in _TASK_COLUMNS if c != "task_id"},
            )
            await conn.execute(stmt, changed)
        applied.changed += [row["task_id"] for row in changed]
        return applied

    async def _forget(self, conn: AsyncConnection, task_ids: set[str]) -> None:
        """Delete withdrawn tasks: their rows and their log (the send, the `withdrawn` entry;
        nothing else is known of a task `withdraws` takes back)."""
        ids = sorted(task_ids)
        await conn.execute(_TASKS.delete().where(_TASKS.c.task_id.in_(ids)))
        await conn.execute(_LOG.delete().where(_LOG.c.task_id.in_(ids)))


def _parts(entries: Sequence[Entry]) -> list[Sequence[Entry]]:
    """The batch in parts, each written in turn: a part ends with each `withdrawn` entry. A send
    after the withdrawal of its task (a client sending again under the same key) has the event
    id of the withdrawn one: in the same part, it would pass for a duplicate of it."""
    cuts = [i + 1 for i, e in enumerate(entries) if e.event == "withdrawn"]
    if not cuts:
        return [entries]
    bounds = [0, *cuts, len(entries)]
    return [entries[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def _columns(row: TaskRow) -> dict[str, Any]:
    # Not dataclasses.asdict: that deep-copies every payload and result.
    return {c: getattr(row, c) for c in _TASK_COLUMNS}


# PostgreSQL: the rows travel as one JSON document that the statement unpacks, so its text is
# the same for every batch and the driver sends a single string. A multi-row VALUES statement
# is new text for every batch size, which psycopg converts anew each time (a fifth of a
# catching-up tracker's time); arrays per column cost as much again in psycopg's escaping.


_PG_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def _json_rows_insert(table: Table, columns: Sequence[str], tail: str) -> TextClause:
    """INSERT of the rows given as a JSON array of objects (`:rows`), in the array's order.

    A JSON null becomes SQL NULL, also in JSON columns (read back as None all the same).
    """
    names = ", ".join(columns)
    types = ", ".join(f"{c} {table.c[c].type.compile(dialect=_PG_DIALECT)}" for c in columns)
    return text(
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS ({types})) "
        f"WITH ORDINALITY AS batch({names}, n) ORDER BY n {tail}"
    )


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, which JSON allows
        return json.dumps(value, default=lambda v: v.isoformat())


_LOG_COLUMNS = [c.name for c in _LOG.columns if c.name != "id"]
_PG_INSERT_LOG = _json_rows_insert(
    _LOG, _LOG_COLUMNS, "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, id"
)
_PG_UPSERT_TASKS = _json_rows_insert(
    _TASKS,
    _TASK_COLUMNS,
    "ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _TASK_COLUMNS if c != "task_id"),
)
_PG_SELECT_TASKS = select(_TASKS).where(
    _TASKS.c.task_id.in_(
        select(func.json_array_elements_text(cast(bindparam("ids", type_=String), JSON)))
    )
)
