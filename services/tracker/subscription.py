"""The tracker's consumer at the aiormq level, kept across reconnects.

aio-pika wraps every delivery in an `IncomingMessage` and a second asyncio task; at the
tracker's rate that was a sixth of its time. The tracker reads a few fields of a message and
acks whole batches, so it takes aiormq's `DeliveredMessage` as it comes. What aio-pika's robust
queue did for its consumers is done here: consume again on every reopened channel (after a
reconnect, the queue's declaration restored first), and after the broker cancelled the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage

log = logging.getLogger(__name__)


class Subscription:
    """`deliver` gets every message of `queue`, unacked, until `stop`."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        deliver: Callable[[DeliveredMessage], None],
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.deliver = deliver
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._stopped = False
        self._again: asyncio.Task[None] | None = None
        # A reopen and a cancel may both ask to consume at once: one consumer per channel.
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        """Whether a consumer is registered on an open channel."""
        return self._tag is not None and self._underlay is not None and not self._underlay.is_closed

    async def start(self) -> None:
        self.channel.reopen_callbacks.add(self._reopened)
        await self._consume()

    async def stop(self) -> None:
        """Cancel the consumer; the deliveries not acked yet go back to the queue on close."""
        self._stopped = True
        self.channel.reopen_callbacks.discard(self._reopened)
        if self._again is not None:
            self._again.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._again
        underlay, tag = self._underlay, self._tag
        self._tag = None
        if underlay is not None and tag is not None and not underlay.is_closed:
            # ChannelInvalidStateError is a RuntimeError: the channel closed meanwhile.
            with contextlib.suppress(
                aiormq.exceptions.AMQPError, RuntimeError, ConnectionError, TimeoutError
            ):
                await underlay.basic_cancel(tag, timeout=5)

    async def _consume(self) -> None:
        """Consume on the channel as it is now, unless this subscription already does."""
        async with self._lock:
            underlay = await self.channel.get_underlay_channel()
            if self._tag is not None and self._underlay is underlay and not underlay.is_closed:
                return
            if self._underlay is not underlay:
                underlay.on_consumer_cancel_callbacks.add(self._cancelled)
            ok = await underlay.basic_consume(self.queue, self._on_delivery, no_ack=False)
            self._underlay, self._tag = underlay, ok.consumer_tag

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        self.deliver(message)

    async def _reopened(self, _channel: Any) -> None:
        """A reopened channel has no consumers; the queue is declared again by then."""
        if not self._stopped:
            await self._consume_again()

    def _cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker cancelled the consumer (its queue was deleted, say): consume again.

        If the queue is gone, consuming closes the channel; the robust channel reopens it,
        declares the queue again, and `_reopened` consumes.
        """
        if frame.consumer_tag != self._tag or self._stopped:
            return
        log.warning("RabbitMQ cancelled the consumer of %s; consuming again", self.queue)
        self._tag = None
        self._again = asyncio.get_running_loop().create_task(self._consume_again())

    async def _consume_again(self) -> None:
        """Consume, logging a failure: it closed the channel, whose reopen consumes again.

        (aio-pika drops a reopen callback's error without a word.)
        """
        try:
            await self._consume()
        except Exception as exc:
            log.warning("could not consume %s again yet (%r)", self.queue, exc)
