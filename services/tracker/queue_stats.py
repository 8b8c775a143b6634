"""Queue depths for the metrics, read by the tracker with passive declares (no plugin needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import metrics
from shared.errors import BusError
from shared.readmodel import Reader
from shared.topology import Topology

log = logging.getLogger(__name__)

#: Pools watched at most: a flood of sends to made-up pools must not grow the metrics forever.
MAX_POOLS = 500


class QueueWatch:
    """Every `every` seconds: the tracker's lag, and each known pool's queue and parking lot."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: Topology,
        engine: AsyncEngine,
        every: float,
    ) -> None:
        self.connection = connection
        self.topo = topo
        self.engine = engine
        self.every = every
        self.pools: set[str] = set()
        self._channel: AbstractRobustChannel | None = None

    def saw(self, batch: Iterable[DeliveredMessage]) -> None:
        """Learn the pools of the sends in a batch (a send's routing key is its pool)."""
        for message in batch:
            if len(self.pools) >= MAX_POOLS:
                return
            key = message.routing_key
            sent = message.exchange in (self.topo.tasks_exchange, self.topo.high_tasks_exchange)
            if sent and key and self.topo.is_pool_name(key):
                self.pools.add(key)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Refresh the gauges in the background while the block runs."""
        task = asyncio.create_task(self._loop(), name="queue-stats")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._channel is not None and not self._channel.is_closed:
                with contextlib.suppress(Exception):
                    await self._channel.close()

    async def _loop(self) -> None:
        with contextlib.suppress(BusError):
            self.pools.update((await Reader(self.engine).pools())[:MAX_POOLS])
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                # Only metrics: a closed connection reconnects by itself, the next round reads
                # again, and nothing here may stop the tracker (CancelledError still passes).
                log.debug("queue depths not read: %r", exc)
            await asyncio.sleep(self.every)

    async def refresh(self) -> None:
        """Read every watched queue's depth and consumers once."""
        ready, _ = await self._depth(self.topo.tracker_queue)
        if ready is not None:
            metrics.TRACKER_LAG.set(ready)
        for pool in sorted(self.pools):
            queue = self.topo.pool_queue(pool)
            for kind, name in (("pool", queue), ("parked", self.topo.parked_queue(queue))):
                ready, consumers = await self._depth(name)
                if ready is None:
                    continue
                metrics.QUEUE_MESSAGES.labels(name, kind, pool).set(ready)
                metrics.QUEUE_CONSUMERS.labels(name, kind, pool).set(consumers or 0)

    async def _depth(self, queue: str) -> tuple[int | None, int | None]:
        """(messages ready, consumers) of a queue, or (None, None) if it does not exist."""
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel()
        try:
            async with asyncio.timeout(5):
                # robust=False: a robust channel answers a passive declare it saw before from
                # its cache, with the depth of that time.
                declared = await self._channel.declare_queue(queue, passive=True, robust=False)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._channel = None  # RabbitMQ closed the channel: a new one next time
            return None, None
        result = declared.declaration_result
        return result.message_count, result.consumer_count
