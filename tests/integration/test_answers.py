"""Answers on the real databases: the first of two answers is the answer; one the API recorded
but never published is applied by the tracker's sweep, which sends the task back (through the
outbox) with the answer, as the API's event would have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.answers import Answers, Claim
from services.tracker.lifecycle import Entry
from services.tracker.overdue import ANSWER_GRACE, OverdueSweep
from services.tracker.store import Store
from shared.ids import answer_event_id, utcnow
from shared.models import LogEntry, Task, TaskOutbox
from shared.schemas import Event, TaskMessage
from shared.topology import Topology

TASKS = Task.__table__  # type: ignore[attr-defined]
OUTBOX = TaskOutbox.__table__  # type: ignore[attr-defined]
LOG = LogEntry.__table__  # type: ignore[attr-defined]
T0 = datetime(2026, 12, 4, tzinfo=UTC)
TASK = {"task_id": "t-asks", "from": "boss", "to": "child", "type": "task", "cmd": "plan",
        "created_at": T0.isoformat()}  # fmt: skip


async def _waiting_task(store: Store) -> None:
    question = Event.model_validate({
        "event_id": "q-1", "event": "input_required", "task_id": "t-asks", "ts": T0,
        "attempt": 1, "round": 1, "question": "which?", "from": "child", "to": "boss",
        "task": TASK,
    })  # fmt: skip
    await store.write(
        [Entry.from_task(TaskMessage.model_validate(TASK)), Entry.from_event(question)]
    )


async def _row(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(TASKS).where(TASKS.c.task_id == "t-asks"))).one()


async def test_one_answer_per_question(engine: AsyncEngine) -> None:
    answers = Answers(engine)
    now = utcnow()
    assert await answers.claim("t-asks", 1, "boss", {"pick": 1}, now) == (Claim.FIRST, "boss")
    # The same answer (its keys in another order) from the same party: a retry.
    assert await answers.claim("t-asks", 1, "boss", {"pick": 1}, now) == (Claim.AGAIN, "boss")
    assert await answers.claim("t-asks", 1, "boss", {"pick": 2}, now) == (Claim.TAKEN, "boss")
    assert await answers.claim("t-asks", 1, "ana", {"pick": 1}, now) == (Claim.TAKEN, "boss")
    assert await answers.claim("t-asks", 2, "boss", "x", now) == (Claim.FIRST, "boss")
    assert await answers.is_recorded("t-asks", 1, "boss", {"pick": 1})
    assert await answers.is_recorded("t-asks", 1, None, {"pick": 1})
    assert not await answers.is_recorded("t-asks", 1, "ana", {"pick": 1})
    assert not await answers.is_recorded("t-asks", 3, None, {"pick": 1})


async def test_an_answer_never_published_is_applied_by_the_sweep(engine: AsyncEngine) -> None:
    store = Store(engine)
    await _waiting_task(store)
    assert (await _row(engine)).state == "input_required"
    recorded_at = utcnow()
    await Answers(engine).claim("t-asks", 1, "boss", {"pick": 2}, recorded_at)
    # The API died before it published it. A sweep within the grace leaves it to the API.
    sweep = OverdueSweep(cast(Any, None), store, Topology("unused"))
    await sweep.sweep(recorded_at + ANSWER_GRACE - timedelta(seconds=1))
    assert (await _row(engine)).state == "input_required"
    await sweep.sweep(recorded_at + ANSWER_GRACE + timedelta(seconds=1))
    row = await _row(engine)
    assert row.state == "pending" and row.asking is None and store.outbox_filled
    async with engine.connect() as conn:
        [body] = (await conn.execute(select(OUTBOX.c.body))).scalars()
        entry_ids = (await conn.execute(select(LOG.c.event_id))).scalars().all()
    sent_back = TaskMessage.model_validate_json(body)
    assert sent_back.answers == [{"pick": 2}] and sent_back.inputs is not None
    assert sent_back.inputs[0].answered_by == "boss"
    # The API's own event, should it come after all, is the same entry.
    assert answer_event_id("t-asks", 1) in entry_ids
    late = Event.model_validate({
        "event_id": answer_event_id("t-asks", 1), "event": "input", "task_id": "t-asks",
        "ts": utcnow(), "round": 1, "answer": {"pick": 2}, "from": "boss",
    })  # fmt: skip
    assert await store.write([Entry.from_event(late)]) == 0
    await sweep.sweep(utcnow() + ANSWER_GRACE * 2)  # nothing waits now: nothing more
    async with engine.connect() as conn:
        assert len((await conn.execute(select(OUTBOX.c.id))).all()) == 1
