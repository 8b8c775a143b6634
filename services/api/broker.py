"""The API's link to RabbitMQ: one connection, one confirming channel, pools declared once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared import amqp, metrics
from shared.backoff import retry
from shared.errors import BrokerUnavailable, BusError, PublishRefused
from shared.ids import new_event_id, utcnow
from shared.parking import ParkingLots
from shared.schemas import Event, TaskMessage
from shared.settings import ApiSettings
from shared.topology import (
    Declared,
    Topology,
    declare_core,
    declare_high,
    declare_pool,
)

log = logging.getLogger(__name__)

#: What keeps the API from publishing: no broker, or a topology it refuses (406).
_DECLARE_ERRORS = (BusError, aiormq.exceptions.AMQPError, RuntimeError, OSError)


class BrokerLink:
    """Connects in the background (the API serves, answering 503, until RabbitMQ is up)."""

    def __init__(
        self,
        settings: ApiSettings,
        on_connect: Callable[[AbstractRobustConnection], None] | None = None,
    ) -> None:
        self.settings = settings
        #: Told of the connection once it is up (it reconnects by itself after that).
        self.on_connect = on_connect
        self.topo = Topology(settings.namespace)
        self._stop = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: Declared | None = None
        self._pools: set[str] = set()
        #: Pools whose queue of high tasks this API declared.
        self._high_pools: set[str] = set()
        self._pool_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="broker-connect")

    async def _connect(self) -> None:
        """Connect and declare, until it works or the API stops (sends get 503 meanwhile); a
        refused topology is said at error level and tried again."""
        with contextlib.suppress(*_DECLARE_ERRORS):  # raised only once stopping
            await retry(
                self._connect_and_declare,
                _DECLARE_ERRORS,
                amqp.RECONNECT,
                log=log,
                what="RabbitMQ not ready for the API",
                stop=self._stop,
                level=logging.ERROR,
            )
            log.info("connected to RabbitMQ, namespace %r", self.settings.namespace)

    async def _connect_and_declare(self, _attempt: int) -> None:
        connection = await amqp.connect_with_retry(self.settings, "convbus-api", self._stop)
        try:
            channel = await amqp.open_publisher_channel(connection)
            self._declared = await declare_core(channel, self.topo)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel
        if self.on_connect is not None:
            self.on_connect(connection)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._connection is not None:
            await self._connection.close()

    @property
    def ready(self) -> bool:
        return (
            self._declared is not None and self._channel is not None and not self._channel.is_closed
        )

    @property
    def pools(self) -> set[str]:
        """The pools this API declared since it started."""
        return set(self._pools)

    def parking(self) -> ParkingLots:
        """The parking lots, over this API's connection."""
        declared = self._require()
        assert self._connection is not None and self._channel is not None
        return ParkingLots(
            self._connection, self._channel, declared, self.topo, self.settings.publish_timeout
        )

    def _require(self) -> Declared:
        if not self.ready or self._declared is None:
            raise BrokerUnavailable("RabbitMQ is unreachable")
        return self._declared

    async def _ensure_pool(self, pool: str, priority: str | None = None) -> None:
        declared_here = self._high_pools if priority == "high" else self._pools
        if pool in declared_here:
            return
        async with self._pool_lock:
            if pool in declared_here:
                return
            declared = self._require()
            assert self._channel is not None
            with amqp.broker_errors("RabbitMQ did not declare the pool's queue in time"):
                async with asyncio.timeout(self.settings.publish_timeout):
                    if priority == "high":
                        await declare_high(self._channel, self.topo, declared, pool)
                    else:
                        await declare_pool(self._channel, self.topo, declared, pool)
            declared_here.add(pool)

    async def publish_task(self, task: TaskMessage) -> None:
        """Publish a task to its pool (declared first, so it is never confirmed and dropped).

        A task RabbitMQ refuses (a queue turned it away: a length limit, say) may still have
        reached the tracker's queue, which the send also routes to: it is withdrawn before
        PublishRefused is raised, so the tracker forgets it. (A key's earlier publish may have
        been confirmed, its confirmation lost with the API that made it: the tracker then
        forgets the send until the client's retry, and a child still runs the task once.)
        """
        await self._ensure_pool(task.to, task.priority)
        started = time.perf_counter()
        try:
            await amqp.publish(
                self._require().tasks_of(task.priority),
                self.topo.task_routing_key(task.to),
                task,
                task.task_id,
                timeout=self.settings.publish_timeout,
                message_type="task",
                headers={amqp.ATTEMPT_HEADER: 1},
            )
        except PublishRefused:
            await self._withdraw(task)
            raise
        metrics.PUBLISH_CONFIRM.labels("task").observe(time.perf_counter() - started)

    async def _withdraw(self, task: TaskMessage) -> None:
        """Tell the tracker to forget a task whose publish RabbitMQ refused, before the 503
        (confirmed first: a send retried under the same key comes after it on the tracker's
        queue). If that cannot be published either, the tracker goes on showing the task
        `pending`: the error says which."""
        event = Event(
            event_id=new_event_id(),
            event="withdrawn",
            ts=utcnow(),
            task_id=task.task_id,
            from_=task.from_,
            to=task.to,
        )
        try:
            await self.publish_event(event)
        except BusError as exc:
            log.error("task %s was refused, and its withdrawal too (it reads pending): %s",
                      task.task_id, exc)  # fmt: skip

    async def publish_event(self, event: Event) -> None:
        """Publish an event for the tracker, confirmed."""
        started = time.perf_counter()
        await amqp.publish(
            self._require().events,
            self.topo.event_routing_key(event.event),
            event,
            event.event_id,
            timeout=self.settings.publish_timeout,
            message_type="event",
        )
        metrics.PUBLISH_CONFIRM.labels("event").observe(time.perf_counter() - started)
