"""The tracker's writes on SQLite and PostgreSQL: batches, duplicates, events out of order."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.lifecycle import Entry
from services.tracker.store import Store
from shared.models import LogEntry, Task
from shared.schemas import Event, TaskMessage

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TASKS = Task.__table__  # type: ignore[attr-defined]
LOG = LogEntry.__table__  # type: ignore[attr-defined]


def send(task_id: str, **extra: Any) -> Entry:
    return Entry.from_task(
        TaskMessage.model_validate(
            {"task_id": task_id, "from": "master", "to": "child", "cmd": "echo",
             "payload": {"n": task_id}, "created_at": T0, **extra}
        )
    )  # fmt: skip


def event(kind: str, task_id: str, seconds: float, **fields: Any) -> Entry:
    return Entry.from_event(
        Event.model_validate(
            {"event_id": f"{kind}-{task_id}-{seconds}", "event": kind, "task_id": task_id,
             "ts": T0 + timedelta(seconds=seconds), **fields}
        )
    )  # fmt: skip


def lifecycle(task_id: str) -> list[Entry]:
    return [
        send(task_id),
        event("processing", task_id, 1, attempt=1, child_id="c1"),
        event("callback", task_id, 2, status="done", result={"ok": task_id}, child_id="c1"),
    ]


async def rows(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        return {r.task_id: dict(r._mapping) for r in await conn.execute(select(TASKS))}


async def log_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count: int = (await conn.execute(select(func.count()).select_from(LOG))).scalar_one()
        return count


async def test_a_batch_of_many_tasks_in_one_write(engine: AsyncEngine) -> None:
    store = Store(engine)
    entries = [e for i in range(300) for e in lifecycle(f"t{i}")]
    assert await store.write(entries) == 900
    tasks = await rows(engine)
    assert len(tasks) == 300
    assert {t["state"] for t in tasks.values()} == {"completed"}
    assert tasks["t7"]["result"] == {"ok": "t7"} and tasks["t7"]["payload"] == {"n": "t7"}
    assert tasks["t7"]["completed_at"] == T0 + timedelta(seconds=2)


async def test_the_same_events_again_change_nothing(engine: AsyncEngine) -> None:
    store = Store(engine)
    entries = lifecycle("t1")
    assert await store.write(entries) == 3
    before = await rows(engine)
    assert await store.write(entries + entries) == 0
    assert await rows(engine) == before
    assert await log_count(engine) == 3


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_any_order_ends_completed_with_the_send_fields(
    engine: AsyncEngine, order: tuple[int, ...]
) -> None:
    store = Store(engine)
    entries = lifecycle("t1")
    for index in order:  # one event per transaction, in this order
        await store.write([entries[index]])
    task = (await rows(engine))["t1"]
    assert task["state"] == "completed" and task["attempts"] == 1
    assert task["cmd"] == "echo" and task["sender"] == "master" and task["send_seen"]
    assert task["result"] == {"ok": "t1"}


async def test_nothing_leaves_a_final_state(engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.write([send("t1"), event("callback", "t1", 1, status="failed", error="bad")])
    await store.write(
        [
            event("processing", "t1", 2, attempt=2, child_id="c2"),
            event("retry", "t1", 3, attempt=2, error="again"),
            Entry.from_event(
                Event(event_id="cb2", event="callback", ts=T0, task_id="t1", status="done")
            ),
        ]
    )
    task = (await rows(engine))["t1"]
    assert task["state"] == "failed" and task["error"] == "bad"
    assert await log_count(engine) == 5  # each event is still in the log


async def test_messages_and_acks_are_logged_without_a_task_row(engine: AsyncEngine) -> None:
    store = Store(engine)
    message = Entry.from_event(
        Event.model_validate(
            {"event_id": "m1", "event": "message", "ts": T0, "from": "master", "to": "user:u1",
             "text": "hello", "conversation_id": "c"}
        )
    )  # fmt: skip
    assert await store.write([message, event("ack", "t9", 1, ack_by="master")]) == 2
    assert await rows(engine) == {}
    assert await log_count(engine) == 2


async def test_a_batch_keeps_its_order_and_its_values_as_they_were(engine: AsyncEngine) -> None:
    """Log ids follow the batch's order; JSON, text and times come back as they went in."""
    store = Store(engine)
    odd: dict[str, Any] = {"big": 2**70, "nested": [{"ü": "命盘"}, None, 1.5], "empty": {}}
    first = [send("t1", payload=odd, text="line\nbreak 'quoted' \\ back"), send("t2", payload=None)]
    assert await store.write(first) == 2
    later = [
        event("processing", "t1", 1, attempt=1, child_id="c1"),
        event("callback", "t1", 2, status="done", result=[1, "two"], child_id="c1"),
        event("callback", "t2", 3, status="failed", error="boom", child_id="c1"),
    ]
    assert await store.write(later) == 3
    async with engine.connect() as conn:
        log = (await conn.execute(select(LOG.c.event_id, LOG.c.data).order_by(LOG.c.id))).all()
    assert [r.event_id for r in log] == ["t1", "t2", *(e.event_id for e in later)]
    assert log[0].data["payload"] == odd
    found = await rows(engine)
    assert found["t1"]["payload"] == odd and found["t1"]["text"] == "line\nbreak 'quoted' \\ back"
    assert found["t1"]["result"] == [1, "two"] and found["t1"]["state"] == "completed"
    assert found["t1"]["completed_at"] == T0 + timedelta(seconds=2)
    assert found["t2"]["payload"] is None and found["t2"]["result"] is None
    assert found["t2"]["state"] == "failed" and found["t2"]["error"] == "boom"


async def log_of(engine: AsyncEngine, task_id: str) -> list[str]:
    async with engine.connect() as conn:
        query = select(LOG.c.event).where(LOG.c.task_id == task_id).order_by(LOG.c.id)
        return list((await conn.execute(query)).scalars())


async def test_a_withdrawn_send_leaves_nothing_and_its_key_may_send_it_again(
    engine: AsyncEngine,
) -> None:
    """RabbitMQ refused a send (the API answered 503): the tracker forgets the copy it got.
    The same id sent again, in the same batch or a later one, is a task again."""
    store = Store(engine)
    committed: list[list[str]] = []

    async def told(c: Any) -> None:
        committed.append(c.task_ids)

    store.on_commit = told
    await store.write([send("t-refused"), send("t-kept")])
    await store.write([event("withdrawn", "t-refused", 1)])
    tasks = await rows(engine)
    assert "t-refused" not in tasks and await log_of(engine, "t-refused") == []
    assert committed[-1] == ["t-refused"]  # waits on it read again (and answer 404)
    assert tasks["t-kept"]["state"] == "pending"

    # Sent, refused and sent again under the same key, all in one batch.
    again = [
        send("t-again"),
        event("withdrawn", "t-again", 1),
        send("t-again"),
        *lifecycle("t-again")[1:],
    ]
    await store.write(again)
    assert (await rows(engine))["t-again"]["state"] == "completed"
    assert await log_of(engine, "t-again") == ["send", "processing", "callback"]


async def test_a_withdrawal_after_a_child_took_the_task_is_only_logged(engine: AsyncEngine) -> None:
    """Another queue than the pool's refused the send: the pool's copy runs, and the task stays."""
    store = Store(engine)
    await store.write([send("t1"), event("processing", "t1", 1, attempt=1, child_id="c1")])
    await store.write([event("withdrawn", "t1", 2)])
    assert (await rows(engine))["t1"]["state"] == "processing"
    assert await log_of(engine, "t1") == ["send", "processing", "withdrawn"]
    # Nor does a withdrawal make up a task the tracker never heard of.
    await store.write([event("withdrawn", "t-unknown", 3)])
    assert "t-unknown" not in await rows(engine)


class _HeldStore(Store):
    """A tracker whose batch stops after its log insert until told to go on."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def _apply_to_tasks(self, conn: Any, entries: list[Entry], log_ids: Any) -> Any:
        self.reached.set()
        await self.go.wait()
        return await super()._apply_to_tasks(conn, entries, log_ids)


async def _waiting_on_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            " AND datname = current_database()"
        )
        return bool((await conn.execute(query)).scalar_one())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_trackers_write_one_batch_at_a_time(engine: AsyncEngine) -> None:
    """The queue handed to a second tracker while the first's batch is still being written:
    the second's batch waits for the first's commit, so it reads the rows as the first left
    them and its log ids come after (the API's streams read the log by id)."""
    await Store(engine).write([send("t1"), event("processing", "t1", 1, attempt=1, child_id="c")])
    first, second = _HeldStore(engine), Store(engine)
    writing = asyncio.create_task(
        first.write([event("callback", "t1", 3, status="done", result=1, child_id="c")])
    )
    await asyncio.wait_for(first.reached.wait(), 10)
    later = asyncio.create_task(second.write([event("progress", "t1", 2, progress=0.5)]))
    for _ in range(200):  # until the second waits for the lock (or wrote, without it)
        if later.done() or await _waiting_on_a_lock(engine):
            break
        await asyncio.sleep(0.05)
    assert not later.done(), "the second tracker's batch did not wait for the first's"
    first.go.set()
    await asyncio.wait_for(asyncio.gather(writing, later), 10)
    async with engine.connect() as conn:
        ids = dict((await conn.execute(select(LOG.c.event, LOG.c.id))).all())
    assert ids["callback"] < ids["progress"]
    assert (await rows(engine))["t1"]["state"] == "completed"
