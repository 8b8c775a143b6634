"""The parking lots: list, show, replay and purge the tasks the pools set aside."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared import amqp
from shared.errors import BrokerUnavailable
from shared.ids import new_event_id, utcnow
from shared.schemas import Event, TaskMessage
from shared.topology import Declared, Topology, declare_high

log = logging.getLogger(__name__)

#: Most messages a listing holds at once (they stay unacked while it reads).
MAX_SCAN = 10_000

#: The first and the longest pause between two tries at a parking lot another connection holds.
LOCK_RETRY_S = (0.01, 0.2)

#: One lock per connection, for its own operations: RabbitMQ lets the connection that owns an
#: exclusive queue declare it again, so the broker's lock does not keep them apart.
_local_locks: weakref.WeakKeyDictionary[AbstractRobustConnection, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Parked:
    """A message in a parking lot."""

    pool: str
    message_id: str | None
    reason: str
    attempt: int | None
    replays: int
    body: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.message_id,
            "pool": self.pool,
            "reason": self.reason,
            "attempt": self.attempt,
            "replays": self.replays,
            "body": self.body,
        }


def _describe(pool: str, message: AbstractIncomingMessage) -> Parked:
    headers = message.headers or {}
    reason = amqp.header_text(headers.get(amqp.DEAD_REASON_HEADER)) or (
        "dead-lettered: " + amqp.header_text(amqp.newest_death(headers).get("reason"))
    )
    attempt = headers.get(amqp.ATTEMPT_HEADER)
    replays = headers.get(amqp.REPLAYS_HEADER, 0)
    try:
        body: Any = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        body = message.body[:2000].decode(errors="replace")
    return Parked(
        pool=pool,
        message_id=message.message_id,
        reason=reason,
        attempt=attempt if isinstance(attempt, int) else None,
        replays=replays if isinstance(replays, int) else 0,
        body=body,
    )


async def _let_go(channel: AbstractChannel, exclusive_queue: str) -> None:
    """Let another connection own `exclusive_queue` (a closed channel: its connection, which
    owned the queue, is gone)."""
    if not channel.is_closed:
        await channel.queue_delete(exclusive_queue)
        await channel.close()


class ParkingLots:
    """Operations on the pools' parking lots, over one robust connection."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: AbstractChannel,
        declared: Declared,
        topo: Topology,
        timeout: float = 10.0,
    ) -> None:
        self.connection = connection
        self.publisher = publisher
        self.declared = declared
        self.topo = topo
        self.timeout = timeout

    @asynccontextmanager
    async def _alone(self, pool: str) -> AsyncIterator[AbstractChannel]:
        """A channel that alone works `pool`'s parking lot until the block ends.

        A scan holds what it reads unacked, hidden from every other operation: a replay or
        purge beside a listing (the dashboard refreshing, a second operator, another API
        replica, the CLI) would miss what the listing holds, and a replay of one task answer
        "not parked". So every operation first owns the pool's lock queue: exclusive, so one
        connection at a time; RabbitMQ drops it with a connection that dies holding it. The
        lock has a channel of its own, so it is let go even when the work's channel failed,
        and only after that channel put back what it held.
        """
        local = _local_locks.setdefault(self.connection, asyncio.Lock())
        async with local:
            lock_channel = await self._lock(pool)
            try:
                channel = await self.connection.channel()
                try:
                    yield channel
                finally:
                    if not channel.is_closed:
                        await channel.close()  # RabbitMQ puts back what was not acked
            finally:
                await _let_go(lock_channel, self.topo.parking_lock_queue(pool))

    async def _lock(self, pool: str) -> AbstractChannel:
        """A channel that owns the pool's lock queue, once no other connection does.

        First the turn, then the lock: one that waits holds the turn, so a holder that is done
        cannot take the lock straight back however often it asks (a listing run again and again
        starved a replay beside it, whose tries at the lock all fell while it was held).
        """
        deadline = time.monotonic() + self.timeout
        turn_queue = self.topo.parking_turn_queue(pool)
        turn_channel = await self._own(pool, turn_queue, deadline)
        try:
            return await self._own(pool, self.topo.parking_lock_queue(pool), deadline)
        finally:
            await _let_go(turn_channel, turn_queue)

    async def _own(self, pool: str, exclusive_queue: str, deadline: float) -> AbstractChannel:
        """A channel that owns `exclusive_queue`, once no other connection does."""
        pause = LOCK_RETRY_S[0]
        while True:
            channel = await self.connection.channel()
            try:
                # Not robust: a connection made again must not take the lock back by itself.
                await channel.declare_queue(exclusive_queue, exclusive=True, robust=False)
                return channel
            except aiormq.exceptions.ChannelLockedResource:
                pass  # another connection works this parking lot (RabbitMQ closed the channel)
            if time.monotonic() + pause > deadline:
                raise BrokerUnavailable(
                    f"the parking lot of pool {pool!r} was busy with another operation for"
                    f" {self.timeout:g} s; try again"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_RETRY_S[1])

    @asynccontextmanager
    async def _held(self, pool: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
        """The parked messages of `pool`, held unacked; those not acked go back on exit."""
        held: list[AbstractIncomingMessage] = []
        async with self._alone(pool) as channel:
            name = self.topo.parked_queue(self.topo.pool_queue(pool))
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                yield held  # the pool never had a task: its parking lot is empty
                return
            while len(held) < MAX_SCAN:
                message = await queue.get(no_ack=False, fail=False, timeout=self.timeout)
                if message is None:
                    break
                held.append(message)
            yield held

    async def peek(self, pools: list[str], limit: int = 100) -> list[Parked]:
        """Up to `limit` parked messages, oldest first, left where they are."""
        found: list[Parked] = []
        for pool in pools:
            async with self._held(pool) as held:
                found += [_describe(pool, m) for m in held[: max(0, limit - len(found))]]
        return found

    async def show(self, task_id: str, pools: list[str]) -> Parked | None:
        for pool in pools:
            async with self._held(pool) as held:
                for message in held:
                    if message.message_id == task_id:
                        return _describe(pool, message)
        return None

    async def replay(self, pools: list[str], task_id: str | None = None) -> int:
        """Send parked tasks back to their pool (one by id, or all); how many went."""
        count = 0
        for pool in pools:
            async with self._held(pool) as held:
                for message in held:
                    if task_id is None or message.message_id == task_id:
                        count += await self._replay_one(pool, message)
                        if task_id is not None:
                            return count
        return count

    async def _replay_one(self, pool: str, message: AbstractIncomingMessage) -> int:
        """Republish confirmed, then ack; 1, or 0 for a message that is not a task (it stays)."""
        try:
            task = TaskMessage.model_validate_json(message.body)
        except ValueError:
            log.warning("not replaying %s: it is not a valid task", message.message_id)
            return 0
        replays = _describe(pool, message).replays + 1
        # The event first: the tracker moves the task out of `failed` before its new attempt.
        event = Event(
            event_id=new_event_id(),
            event="replay",
            ts=utcnow(),
            task_id=task.task_id,
            conversation_id=task.conversation_id,
            queue=self.topo.parked_queue(self.topo.pool_queue(pool)),
        )
        await amqp.publish(
            self.declared.events,
            self.topo.event_routing_key("replay"),
            event,
            event.event_id,
            timeout=self.timeout,
            message_type="event",
        )
        if task.priority == "high":  # back to the pool's high queue, declared if it is not
            await declare_high(self.publisher, self.topo, self.declared, pool)
        await amqp.publish(
            self.declared.tasks_of(task.priority),
            self.topo.task_routing_key(pool),
            message.body,
            task.task_id,
            timeout=self.timeout,
            message_type="task",
            headers={amqp.ATTEMPT_HEADER: 1, amqp.REPLAYS_HEADER: replays},
        )
        await message.ack()
        log.info("replayed %s to pool %s (replay %d)", task.task_id, pool, replays)
        return 1

    async def purge(self, pools: list[str]) -> int:
        count = 0
        for pool in pools:
            async with self._alone(pool) as channel:
                try:
                    queue = await channel.declare_queue(
                        self.topo.parked_queue(self.topo.pool_queue(pool)), passive=True
                    )
                except aiormq.exceptions.ChannelNotFoundEntity:
                    continue
                result = await queue.purge()
                count += int(getattr(result, "message_count", 0) or 0)
        return count
