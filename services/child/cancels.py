"""The cancels a child honours: those the API recorded, and those it hears live.

The API records a cancel in its database before it publishes the `cancel` event (and answers
200 only after both). After every (re)connection to the broker, a child first binds a queue of
its own to the `cancel` events, then reads the recorded cancels of the last CONTROL_MAX_AGE_DAYS
from the API (GET /api/relay/cancels): every cancel answered 200 before the read is in the
list, and every one after it arrives on the queue. Until both are in place (`ready`) the child
starts no task, so a child that starts late, or was cut off from the broker when a cancel was
sent, never starts a canceled task. A task older than the list is looked up at the API instead
(`may_be_forgotten`).

Why not a RabbitMQ stream that every child reads from its start: on RabbitMQ 3.10 a stream on a
node that crashed does not come back ("home node … is down or inaccessible"), and no task would
start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from pydantic import ValidationError

from shared.backoff import Backoff, retry
from shared.errors import BusError
from shared.ids import new_run_id, utcnow
from shared.schemas import Event
from shared.topology import CONTROL_MAX_AGE_DAYS, Topology, declare_control

log = logging.getLogger(__name__)

#: Cancel events the child holds unacked at once on its queue.
_PREFETCH = 100
#: A task older than this may have been canceled before the oldest cancel the child read.
_REMEMBERED = timedelta(days=CONTROL_MAX_AGE_DAYS) - timedelta(hours=1)
_FOLLOW_BACKOFF = Backoff(first=0.5, factor=2.0, cap=10.0)
#: One try at following the cancels (a broker or an API that does not answer, say).
_FOLLOW_TIMEOUT = 15.0
_FOLLOW_ERRORS = (BusError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError, OSError)

#: Reads the ids of the tasks canceled since a moment (the API's list; CallbackClient).
ReadCancels = Callable[[datetime], Awaitable[list[str]]]


class CancelFeed:
    """The task ids cancelled on the bus, and whether they are known up to now (`ready`)."""

    def __init__(
        self,
        topo: Topology,
        child_id: str,
        read_cancels: ReadCancels,
        on_cancel: Callable[[str], None],
    ) -> None:
        self.topo = topo
        self.child_id = child_id
        self.read_cancels = read_cancels
        self.on_cancel = on_cancel
        self.canceled: set[str] = set()
        #: Set once the recorded cancels are read and the live ones are heard.
        self.ready = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._following: asyncio.Task[None] | None = None

    def start(self, connection: AbstractRobustConnection) -> None:
        """Follow the cancels, in the background (`ready` once in place)."""
        self._connection = connection
        # Cleared as soon as the connection is lost, before aio-pika restores the pool's consumer
        # (it does so before it calls the reconnect callbacks): no start until followed again.
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._reconnected)
        self._follow()

    def may_be_forgotten(self, created_at: datetime) -> bool:
        """Whether a task this old may have had its cancel left out of the list read."""
        return created_at < utcnow() - _REMEMBERED

    def _lost(self, *_: Any) -> None:
        self.ready.clear()

    async def _reconnected(self, *_: Any) -> None:
        self.ready.clear()
        self._follow()

    def _follow(self) -> None:
        if self._following is not None:
            self._following.cancel()
        self._following = asyncio.create_task(self._follow_until_ready())

    async def _follow_until_ready(self) -> None:
        await retry(
            lambda _: self._follow_once(), _FOLLOW_ERRORS, _FOLLOW_BACKOFF, log=log,
            what="cancels not followed (no task starts until they are)",
        )  # fmt: skip
        log.info("cancels followed: %d known", len(self.canceled))
        self.ready.set()

    async def _follow_once(self) -> None:
        """Hear the live cancels on a queue of the child's own, then read the recorded ones.

        Not left to aio-pika's restore (robust=False): an exclusive queue is declared anew after
        each reconnection, and what was sent meanwhile comes from the API's list.
        """
        assert self._connection is not None
        old, self._channel = self._channel, None
        if old is not None and not old.is_closed:
            with contextlib.suppress(Exception):
                await old.close()
        async with asyncio.timeout(_FOLLOW_TIMEOUT):
            channel = await self._connection.channel()
            try:
                await channel.set_qos(prefetch_count=_PREFETCH)
                queue = await declare_control(channel, self.topo, self.child_id, new_run_id())
                await queue.consume(self._on_message, robust=False)
                since = utcnow() - timedelta(days=CONTROL_MAX_AGE_DAYS)
                for task_id in await self.read_cancels(since):
                    self._take(task_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        self._channel = channel

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValidationError:
            log.warning("ignoring a message among the cancels that is not an event")
        else:
            if event.event == "cancel" and event.task_id is not None:
                self._take(event.task_id)
        await message.ack()

    def _take(self, task_id: str) -> None:
        if task_id not in self.canceled:
            self.canceled.add(task_id)
            self.on_cancel(task_id)

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
        if self._channel is not None and not self._channel.is_closed:
            try:
                await self._channel.close()
            except Exception as exc:  # closing anyway: the connection goes next
                log.debug("cancels channel not closed cleanly: %r", exc)
