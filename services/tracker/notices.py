"""Commit notices: after each commit, one transient message to every API replica.

They wake the API's waits (`?wait=`) and streams, so that thousands of them cost no database
polling. A notice is unconfirmed and may be lost (a broker restart, a full backlog): each one
carries a sequence number, and a replica that sees a gap reads again what it waits for; a wait
also reads once more when its time is up.

They are sent in the background, on a connection other than the one the tracker consumes on:
the commit never waits for them, and a broker that blocks publishers (a memory alarm) blocks
only that connection, while the tracker goes on draining its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from services.tracker.store import Committed
from shared.ids import new_run_id
from shared.schemas import CommitNotice
from shared.topology import Topology, declare_committed

log = logging.getLogger(__name__)

#: A notice not written in this long is given up (its gap tells the replicas).
_PUBLISH_TIMEOUT = 2.0
#: Notices waiting to be sent; past this, new ones are dropped (a gap: the replicas read again).
_BACKLOG = 1000


class CommitNotices:
    """Sends a CommitNotice per commit, in order, in the background."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self.connection = connection
        self.topo = topo
        self.run = new_run_id()
        self.seq = 0
        self._waiting: asyncio.Queue[CommitNotice] = asyncio.Queue(maxsize=_BACKLOG)
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._sending = asyncio.create_task(self._send_all(), name="commit-notices")

    async def committed(self, committed: Committed) -> None:
        """Queue the notice of a commit; never waits, never raises."""
        self.seq += 1  # counted even when dropped: the next one shows the gap
        notice = CommitNotice(
            tracker=self.run,
            seq=self.seq,
            last_id=committed.last_id,
            task_ids=committed.task_ids,
            inboxes=committed.inboxes,
        )
        with contextlib.suppress(asyncio.QueueFull):
            self._waiting.put_nowait(notice)

    async def _send_all(self) -> None:
        while True:
            notice = await self._waiting.get()
            message = aio_pika.Message(
                notice.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            )
            try:
                async with asyncio.timeout(_PUBLISH_TIMEOUT):
                    exchange = await self._open()
                    await exchange.publish(message, routing_key="")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._channel = None
                log.debug("commit notice %d not published: %r", notice.seq, exc)

    async def _open(self) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed or self._exchange is None:
            if self._channel is not None and not self._channel.is_closed:
                await self._channel.close()
            self._channel = await self.connection.channel(publisher_confirms=False)
            self._exchange = await declare_committed(self._channel, self.topo)
        return self._exchange

    async def close(self) -> None:
        self._sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sending
