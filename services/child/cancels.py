"""The cancels a child honours, read from the namespace's control stream (`{ns}.control`).

Every `cancel` event is routed to the stream as well as to the tracker. A child reads the stream
from its start (it keeps CONTROL_MAX_AGE_DAYS), so it knows every cancel of a task that may
still be queued, even one sent before the child started or while it was cut off from the
broker. It starts no task before it has read the stream up to a marker it published itself
after its last (re)connection: everything confirmed before the marker was read by then (a
stream keeps the order in which it confirmed). A task older than the stream's memory is looked
up at the API instead (`may_be_forgotten`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pydantic import ValidationError

from shared import amqp
from shared.errors import BusError
from shared.ids import new_event_id, utcnow
from shared.schemas import Event
from shared.topology import CONTROL_MAX_AGE_DAYS, Topology

log = logging.getLogger(__name__)

#: Stream messages the child holds unacked at once (a stream needs a prefetch).
_PREFETCH = 1000
_MARKER = "marker"
#: A task older than this may have been cancelled before the oldest cancel the stream keeps.
_REMEMBERED = timedelta(days=CONTROL_MAX_AGE_DAYS) - timedelta(hours=1)


class CancelFeed:
    """The task ids cancelled on the bus, and whether they are known up to now (`ready`)."""

    def __init__(self, topo: Topology, on_cancel: Callable[[str], None]) -> None:
        self.topo = topo
        self.on_cancel = on_cancel
        self.canceled: set[str] = set()
        #: Set once the stream was read up to this child's last marker.
        self.ready = asyncio.Event()
        self._marker: str | None = None
        self._channel: AbstractRobustChannel | None = None
        self._publisher: AbstractChannel | None = None

    async def start(self, connection: AbstractRobustConnection, publisher: AbstractChannel) -> None:
        """Read the stream from its start; publish the first marker."""
        self._publisher = publisher
        channel = self._channel = await connection.channel()
        await channel.set_qos(prefetch_count=_PREFETCH)
        stream = await channel.declare_queue(
            self.topo.control_stream, durable=True, arguments=self.topo.control_stream_arguments()
        )
        # A robust channel consumes again after a reconnection, with these arguments: the whole
        # stream again, then the marker published below (the set keeps each id once).
        await stream.consume(self._on_message, arguments={"x-stream-offset": "first"})
        connection.reconnect_callbacks.add(self._reconnected)
        await self._mark()

    def may_be_forgotten(self, created_at: datetime) -> bool:
        """Whether a task this old may have had its cancel dropped from the stream."""
        return created_at < utcnow() - _REMEMBERED

    async def _reconnected(self, *_: Any) -> None:
        # Cancels sent while the connection was down are read again before any task starts.
        self.ready.clear()
        try:
            await self._mark()
        except BusError as exc:  # the next reconnection marks again
            log.warning("control stream marker not published after reconnecting: %s", exc)

    async def _mark(self) -> None:
        marker = self._marker = new_event_id()
        assert self._publisher is not None
        await amqp.publish(
            self._publisher.default_exchange,
            self.topo.control_stream,
            marker.encode(),
            marker,
            timeout=10,
            message_type=_MARKER,
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.type == _MARKER:
            if message.body.decode(errors="replace") == self._marker:
                if not self.ready.is_set():
                    log.info("cancels read up to now: %d known", len(self.canceled))
                self.ready.set()
        else:
            try:
                event = Event.model_validate_json(message.body)
            except ValidationError:
                log.warning("ignoring a message on the control stream that is not an event")
            else:
                self._take(event)
        await message.ack()

    def _take(self, event: Event) -> None:
        task_id = event.task_id
        if event.event == "cancel" and task_id is not None and task_id not in self.canceled:
            self.canceled.add(task_id)
            self.on_cancel(task_id)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            try:
                await self._channel.close()
            except Exception as exc:  # closing anyway: the connection goes next
                log.debug("control stream channel not closed cleanly: %r", exc)
