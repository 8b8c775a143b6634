"""The tracker's outbox: tasks it sends, recorded in the transaction of the change that calls
for them, then published (confirmed) and forgotten.

Two changes call for a task: a change of state a send's `notify` names (a webhook delivery, a
task of the pool `_webhooks`: services/tracker/webhooks.py) and the answer to a question a task
waited on (the task goes back to its pool with the answer: services/tracker/lifecycle.py
`resumed`). A tracker that dies between the publish and the delete publishes the row again
at its next start: a delivery's id makes its copy the same task; a task answered may then run
twice (never zero times), as a lease's task sent again may (services/tracker/overdue.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import amqp
from shared.db import connection, exclusive
from shared.models import TaskOutbox
from shared.schemas import TaskMessage
from shared.topology import Declared, Topology, declare_core, declare_high, declare_pool

log = logging.getLogger(__name__)

#: Held while a tracker publishes the outbox: with two trackers on one database (a standby's
#: sweep wakes its outbox too), one publishes at a time, and a row is published, then deleted,
#: before the other looks.
OUTBOX_LOCK = "convbus:outbox"

_OUTBOX = TaskOutbox.__table__  # type: ignore[attr-defined]
#: Tasks published per look at the outbox.
_PAGE = 500
_PUBLISH_TIMEOUT = 10.0


def outbox_row(row_id: str, task: TaskMessage, now: datetime, attempt: int = 1) -> dict[str, Any]:
    """The outbox's row of a task to publish."""
    body = task.model_dump_json(by_alias=True, exclude_none=True)
    return {"id": row_id, "body": body, "attempt": attempt, "created_at": now}


def answered_row_id(task_id: str, round_: int) -> str:
    """The outbox row of a task sent back with the answer to its question `round_`."""
    return f"{task_id}/input/{round_}"


class Outbox:
    """Publishes what the outbox holds (confirmed), then deletes it: in the background, woken
    after a commit that recorded some, and now and then for what a failed try left."""

    def __init__(
        self, connection: AbstractRobustConnection, engine: AsyncEngine, topo: Topology
    ) -> None:
        self.connection = connection
        self.engine = engine
        self.topo = topo
        self._channel: AbstractChannel | None = None
        self._declared: Declared | None = None
        #: The pools (and priorities) declared on `_channel`.
        self._pools: set[tuple[str, str | None]] = set()
        #: Woken by the active tracker only (a standby publishing too would send copies).
        self._wake = asyncio.Event()
        self._flushing = asyncio.create_task(self._flush_when_woken(), name="task-outbox")

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
        """Publish every task in the outbox; how many (0 while another tracker publishes it).
        Never raises: what is left is published at the next flush."""
        try:
            async with exclusive(self.engine, OUTBOX_LOCK) as mine:
                return await self._flush() if mine else 0
        except Exception as exc:  # a failed flush must not stop the tracker
            self._channel = None
            log.warning("tasks of the outbox not published yet, trying again later: %r", exc)
            return 0

    async def _flush(self) -> int:
        sent = 0
        while True:
            async with connection(self.engine) as conn:
                query = select(_OUTBOX).order_by(_OUTBOX.c.created_at).limit(_PAGE)
                rows = list(await conn.execute(query))
            if not rows:
                return sent
            for row in rows:
                await self._publish(row.body, row.attempt)
            async with connection(self.engine, write=True) as conn:
                ids = [row.id for row in rows]
                await conn.execute(delete(_OUTBOX).where(_OUTBOX.c.id.in_(ids)))
            sent += len(rows)

    async def _publish(self, body: str, attempt: int) -> None:
        """Publish a task to its pool (declared first: a pool's queue gone would lose it)."""
        fields = orjson.loads(body)
        pool, priority, task_id = fields["to"], fields.get("priority"), fields["task_id"]
        declared = await self._open()
        if (pool, priority) not in self._pools:
            assert self._channel is not None
            declare = declare_high if priority == "high" else declare_pool
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                await declare(self._channel, self.topo, declared, pool)
            self._pools.add((pool, priority))
        await amqp.publish(
            declared.tasks_of(priority), self.topo.task_routing_key(pool), body.encode(),
            task_id, timeout=_PUBLISH_TIMEOUT, message_type="task",
            headers={amqp.ATTEMPT_HEADER: attempt},
        )  # fmt: skip

    async def _open(self) -> Declared:
        if self._channel is None or self._channel.is_closed or self._declared is None:
            self._channel = await amqp.open_publisher_channel(self.connection)
            self._declared = await declare_core(self._channel, self.topo)
            self._pools = set()
        return self._declared
