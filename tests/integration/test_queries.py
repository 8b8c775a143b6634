"""The API's log and pool queries on SQLite and PostgreSQL, against the same filters in Python."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.lifecycle import Entry
from services.tracker.store import Store
from shared.models import LogEntry, Task
from shared.readmodel import INBOX_EVENTS, LogFilter, Reader
from shared.schemas import Event, TaskMessage

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LOG = LogEntry.__table__  # type: ignore[attr-defined]
TASKS = Task.__table__  # type: ignore[attr-defined]


def _entries() -> list[Entry]:
    """Tasks of two conversations (and of none) in three pools, their events, messages."""
    entries: list[Entry] = []
    for n in range(30):
        task_id = f"t{n}"
        conversation = ["conv-a", "conv-b", None][n % 3]
        at = T0 + timedelta(minutes=n)
        entries.append(
            Entry.from_task(
                TaskMessage.model_validate(
                    {"task_id": task_id, "from": f"agent-{n % 2}", "to": f"pool-{n % 3}",
                     "cmd": "echo", "conversation_id": conversation, "created_at": at}
                )
            )
        )  # fmt: skip
        for kind, fields in (
            ("processing", {"attempt": 1, "conversation_id": conversation}),
            ("callback", {"status": "done" if n % 4 else "failed"}),  # no conversation id
            ("ack", {"ack_by": "master"}),
        ):
            entries.append(
                Entry.from_event(
                    Event.model_validate(
                        {"event_id": f"{kind}-{n}", "event": kind, "task_id": task_id,
                         "ts": at + timedelta(seconds=1), **fields}
                    )
                )
            )  # fmt: skip
        if n % 5 == 0:
            entries.append(
                Entry.from_event(
                    Event.model_validate(
                        {"event_id": f"m-{n}", "event": "message", "ts": at, "from": "agent-0",
                         "to": "user-1", "conversation_id": conversation, "text": "hi"}
                    )
                )
            )  # fmt: skip
    return entries


def _matches(
    row: dict[str, Any], f: LogFilter, in_conversation: set[str], outcomes: dict[str, set[int]]
) -> bool:
    if f.conversation_id is not None and not (
        row["conversation_id"] == f.conversation_id or row["task_id"] in in_conversation
    ):
        return False
    # `to`: sent to it, or the outcome of a task it sent.
    if f.recipient is not None and not (
        row["recipient"] == f.recipient or row["id"] in outcomes.get(f.recipient, set())
    ):
        return False
    return all(
        want is None or row[column] == want
        for column, want in (("task_id", f.task_id), ("sender", f.sender), ("event", f.event))
    ) and (f.after is None or row["id"] > f.after)


async def _outcomes(engine: AsyncEngine) -> dict[str, set[int]]:
    """The log ids of the outcomes of each sender's tasks, as the tasks' rows have them."""
    outcomes: dict[str, set[int]] = {}
    async with engine.connect() as conn:
        for sender, outcome_id in await conn.execute(select(TASKS.c.sender, TASKS.c.outcome_id)):
            if outcome_id is not None:
                outcomes.setdefault(sender, set()).add(outcome_id)
    return outcomes


async def test_logs_match_their_filters(engine: AsyncEngine) -> None:
    entries = _entries()
    # In small batches, so that ids interleave the tasks as the tracker's would.
    for start in range(0, len(entries), 7):
        await Store(engine).write(entries[start : start + 7])
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(select(LOG).order_by(LOG.c.id))]
    conversations = {
        c: {e.task_id for e in entries if e.event == "send" and e.conversation_id == c}
        for c in ("conv-a", "conv-b")
    }
    middle = rows[len(rows) // 2]["id"]
    outcomes = await _outcomes(engine)
    # Each task's callback is its outcome, in its sender's inbox.
    assert sum(map(len, outcomes.values())) == 30
    reader = Reader(engine)
    checked = 0
    for conversation, sender, recipient, event, after, limit in itertools.product(
        [None, "conv-a", "conv-b", "conv-none"],
        [None, "agent-0"],
        [None, "pool-1", "user-1", "agent-1"],
        [None, "callback", "send"],
        [None, 0, middle],
        [3, 1000],
    ):
        f = LogFilter(limit, None, conversation, sender, recipient, event, after)
        tasks = conversations.get(conversation or "", set())
        matching = [r for r in rows if _matches(r, f, tasks, outcomes)]
        expected = matching[:limit] if after is not None else matching[-limit:]
        assert await reader.logs(f) == expected, f
        checked += bool(expected)
    assert checked > 100  # most combinations match something
    by_task = await reader.logs(LogFilter(task_id="t4", conversation_id="conv-b"))
    assert [r["event"] for r in by_task] == ["send", "processing", "callback", "ack"]


async def test_an_inbox_holds_the_messages_to_it_and_the_outcomes_of_its_tasks(
    engine: AsyncEngine,
) -> None:
    entries = _entries()
    for start in range(0, len(entries), 7):
        await Store(engine).write(entries[start : start + 7])
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(select(LOG).order_by(LOG.c.id))]
    outcomes = await _outcomes(engine)
    reader = Reader(engine)
    for name, after, limit in itertools.product(
        ["user-1", "agent-0", "agent-1", "pool-1", "nobody"], [0, rows[40]["id"]], [2, 1000]
    ):
        expected = [
            r for r in rows if r["id"] > after and (
                (r["event"] in INBOX_EVENTS and r["recipient"] == name)
                or r["id"] in outcomes.get(name, set())
            )
        ][:limit]  # fmt: skip
        assert await reader.inbox(name, after, limit) == expected, (name, after, limit)
    # A pool's inbox holds no sends: what is sent to a pool is work, not mail.
    assert await reader.inbox("pool-1", 0, 1000) == []


async def test_a_conversations_log_includes_its_tasks_callbacks(engine: AsyncEngine) -> None:
    await Store(engine).write(_entries())
    found = await Reader(engine).logs(LogFilter(conversation_id="conv-a", event="callback"))
    assert [r["task_id"] for r in found] == [f"t{n}" for n in range(0, 30, 3)]
    assert all(r["conversation_id"] is None for r in found)


async def test_pools(engine: AsyncEngine) -> None:
    reader = Reader(engine)
    assert await reader.pools() == []
    await Store(engine).write(_entries())
    assert await reader.pools() == ["pool-0", "pool-1", "pool-2"]
    # A task known only from a callback that raced ahead of its send has no pool yet.
    early = Event.model_validate(
        {"event_id": "cb-x", "event": "callback", "task_id": "tx", "ts": T0, "status": "done"}
    )
    await Store(engine).write([Entry.from_event(early)])
    assert await reader.pools() == ["pool-0", "pool-1", "pool-2"]
