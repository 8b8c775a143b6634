"""The webhook outbox on the real database and broker: a delivery is recorded with the change it
reports, in one transaction; a tracker that stopped before publishing it leaves it in the
outbox, and the next tracker's flush publishes it (confirmed) and only then forgets it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aio_pika
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.lifecycle import Entry
from services.tracker.outbox import Outbox
from services.tracker.store import Store
from services.tracker.webhooks import delivery_id
from shared.models import Task, TaskOutbox
from shared.schemas import Event, TaskMessage
from shared.topology import WEBHOOK_POOL
from tests.support.bus import Namespace

OUTBOX = TaskOutbox.__table__  # type: ignore[attr-defined]
TASKS = Task.__table__  # type: ignore[attr-defined]
T0 = datetime(2026, 12, 4, tzinfo=UTC)


async def _outboxed(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(OUTBOX.c.id))).scalars())


async def test_a_recorded_delivery_outlives_a_tracker_that_never_published_it(
    engine: AsyncEngine, namespace: Namespace
) -> None:
    namespace.pools.add(WEBHOOK_POOL)
    task = TaskMessage.model_validate({
        "task_id": "t-hooked", "from": "boss", "to": "child", "type": "task", "cmd": "echo",
        "created_at": T0, "notify": {"url": "http://hooks.example/x"},
    })  # fmt: skip
    done = Event.model_validate({
        "event_id": "cb-1", "event": "callback", "task_id": "t-hooked", "ts": T0,
        "status": "done", "result": {"ok": True},
    })  # fmt: skip
    store = Store(engine)
    await store.write([Entry.from_task(task)])
    assert await _outboxed(engine) == []  # `pending` is not among the events it asked for
    await store.write([Entry.from_event(done)])
    assert store.outbox_filled
    # The tracker stops here, before it publishes: the delivery waits in the outbox, and is a
    # task of the bus already (a callback of it finds it).
    [waiting] = await _outboxed(engine)
    async with engine.connect() as conn:
        row = (await conn.execute(select(TASKS).where(TASKS.c.task_id == waiting))).one()
        of_task = select(TASKS.c.outcome_id).where(TASKS.c.task_id == "t-hooked")
        outcome = (await conn.execute(of_task)).scalar()
    assert row.state == "pending" and row.recipient == WEBHOOK_POOL and row.cmd == "deliver"
    assert outcome is not None and waiting == delivery_id("t-hooked", outcome)

    connection = await aio_pika.connect_robust(namespace.amqp_url)
    outbox = Outbox(connection, engine, namespace.topo)
    outbox.wake()  # as the next active tracker does
    try:
        async with asyncio.timeout(10):
            while await _outboxed(engine):  # noqa: ASYNC110  (the outbox's own task)
                await asyncio.sleep(0.02)
        channel = await connection.channel()
        queue = await channel.get_queue(namespace.topo.pool_queue(WEBHOOK_POOL))
        message = await queue.get(timeout=5)
        assert message is not None and message.message_id == waiting
        published = TaskMessage.model_validate_json(message.body)
        assert published.payload is not None
        assert published.payload["delivery"]["task_status"] == "completed"
        assert published.payload["url"] == "http://hooks.example/x"
        await message.ack()
        # Nothing left: a second flush publishes nothing.
        assert await outbox.flush() == 0
    finally:
        await outbox.close()
        await connection.close()
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(OUTBOX))).scalar() == 0
