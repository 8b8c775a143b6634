"""Webhooks, the tracker's part: a delivery task for each change of state a send's `notify`
names, recorded with the change; and the outbox that publishes them.

A delivery is a task of the bus's own pool (`_webhooks`, served by `convbus webhooks`): it has
the retries, backoff, parking and replay of every task, and its entries are in the log. The
tracker records it (its send, its row, and a row in `webhook_outbox`) in the transaction of the
change it reports, then publishes it, confirmed, and deletes the outbox row. After a crash, the
rows left are published again at start; the delivery's id, derived from the entry it reports,
makes a second copy the same task (the child runs a task id once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.lifecycle import Entry, TaskRow
from shared import amqp
from shared.db import connection
from shared.models import WebhookOutbox
from shared.readmodel import public_entry
from shared.schemas import TaskMessage
from shared.topology import WEBHOOK_POOL, Declared, Topology, declare_core, declare_pool

log = logging.getLogger(__name__)

_OUTBOX = WebhookOutbox.__table__  # type: ignore[attr-defined]
#: Who sends the deliveries (their `from`).
SENDER = "convbus"
#: Deliveries published per look at the outbox.
_PAGE = 500
_PUBLISH_TIMEOUT = 10.0


def delivery_id(task_id: str, log_id: int) -> str:
    """A delivery's task id: the same for the same entry, whoever records it again."""
    return "wh_" + hashlib.sha256(f"{task_id}/{log_id}".encode()).hexdigest()[:40]


def delivery_for(
    before: TaskRow | None, after: TaskRow, entry: Entry, log_id: int
) -> TaskMessage | None:
    """The webhook delivery `entry` calls for, if it moved the task into a state its send's
    `notify` names."""
    notify = after.notify
    if notify is None or after.state not in notify["events"]:
        return None
    if before is not None and before.state == after.state:
        return None
    row: dict[str, Any] = {
        "id": log_id, "event": entry.event, "ts": entry.ts, "task_id": entry.task_id,
        "conversation_id": entry.conversation_id, "sender": entry.sender,
        "recipient": entry.recipient, "data": entry.data,
    }  # fmt: skip
    delivery = delivery_id(after.task_id, log_id)
    return TaskMessage(
        task_id=delivery,
        created_at=entry.ts,
        from_=SENDER,
        to=WEBHOOK_POOL,
        type="task",
        cmd="deliver",
        conversation_id=after.conversation_id,
        payload={
            "url": notify["url"],
            "delivery": {
                "delivery_id": delivery,
                "task_id": after.task_id,
                "task_status": after.state,
                "entry": public_entry(row),
            },
        },
    )


def outbox_rows(deliveries: list[TaskMessage], now: datetime) -> list[dict[str, Any]]:
    return [
        {"task_id": d.task_id, "body": d.model_dump_json(by_alias=True, exclude_none=True),
         "created_at": now}
        for d in deliveries
    ]  # fmt: skip


class Outbox:
    """Publishes the recorded deliveries (confirmed), then forgets them: in the background,
    woken after a commit that recorded some, and now and then for what a failed try left."""

    def __init__(
        self, connection: AbstractRobustConnection, engine: AsyncEngine, topo: Topology
    ) -> None:
        self.connection = connection
        self.engine = engine
        self.topo = topo
        self._channel: AbstractChannel | None = None
        self._declared: Declared | None = None
        #: Woken by the active tracker only (a standby publishing too would send copies).
        self._wake = asyncio.Event()
        self._flushing = asyncio.create_task(self._flush_when_woken(), name="webhook-outbox")

    def wake(self) -> None:
        self._wake.set()

    async def _flush_when_woken(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        self._flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flushing

    async def flush(self) -> int:
        """Publish every delivery in the outbox; how many. Never raises: what is left is
        published at the next flush."""
        sent = 0
        try:
            while True:
                async with connection(self.engine) as conn:
                    query = select(_OUTBOX).order_by(_OUTBOX.c.created_at).limit(_PAGE)
                    rows = list(await conn.execute(query))
                if not rows:
                    return sent
                declared = await self._open()
                for row in rows:
                    await amqp.publish(
                        declared.tasks, self.topo.task_routing_key(WEBHOOK_POOL),
                        row.body.encode(), row.task_id, timeout=_PUBLISH_TIMEOUT,
                        message_type="task", headers={amqp.ATTEMPT_HEADER: 1},
                    )  # fmt: skip
                async with connection(self.engine, write=True) as conn:
                    ids = [row.task_id for row in rows]
                    await conn.execute(delete(_OUTBOX).where(_OUTBOX.c.task_id.in_(ids)))
                sent += len(rows)
        except Exception as exc:  # a failed flush must not stop the tracker
            self._channel = None
            log.warning("webhook deliveries not published yet, trying again later: %r", exc)
            return sent

    async def _open(self) -> Declared:
        if self._channel is None or self._channel.is_closed or self._declared is None:
            self._channel = await amqp.open_publisher_channel(self.connection)
            self._declared = await declare_core(self._channel, self.topo)
            await declare_pool(self._channel, self.topo, self._declared, WEBHOOK_POOL)
        return self._declared
