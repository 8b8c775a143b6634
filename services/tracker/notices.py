"""Commit notices: after each commit, one transient message to every API replica.

They wake the API's waits (`?wait=`) and streams, so that thousands of them cost no database
polling. A notice is unconfirmed and may be lost (a broker restart, a full socket): each one
carries a sequence number, and a replica that sees a gap reads again what it waits for; a wait
also reads once more when its time is up.
"""

from __future__ import annotations

import asyncio
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


class CommitNotices:
    """Publishes a CommitNotice per commit on the tracker's connection (its own channel)."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self.connection = connection
        self.topo = topo
        self.run = new_run_id()
        self.seq = 0
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def committed(self, committed: Committed) -> None:
        """Tell the API replicas; never raises (a lost notice is a gap, not an error)."""
        self.seq += 1  # counted even when lost: the next one shows the gap
        notice = CommitNotice(
            tracker=self.run,
            seq=self.seq,
            last_id=committed.last_id,
            task_ids=committed.task_ids,
            inboxes=committed.inboxes,
        )
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
            log.debug("commit notice %d not published: %r", self.seq, exc)

    async def _open(self) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed or self._exchange is None:
            if self._channel is not None and not self._channel.is_closed:
                await self._channel.close()
            self._channel = await self.connection.channel(publisher_confirms=False)
            self._exchange = await declare_committed(self._channel, self.topo)
        return self._exchange
