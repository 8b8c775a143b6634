"""Operations on a parking lot, side by side: a listing holds what it reads unacked, so a replay
or purge beside it (the dashboard refreshing, a second operator, another API replica, the CLI)
must wait for it rather than miss what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aio_pika.abc import AbstractRobustConnection

from shared import amqp
from shared.errors import BrokerUnavailable
from shared.ids import utcnow
from shared.parking import ParkingLots
from shared.schemas import TaskMessage
from shared.settings import BusSettings
from shared.topology import declare_core, declare_pool
from tests.support.bus import Namespace

POOL = "child"
PARKED = 12


async def _lots(namespace: Namespace, connection: AbstractRobustConnection) -> ParkingLots:
    publisher = await amqp.open_publisher_channel(connection)
    declared = await declare_core(publisher, namespace.topo)
    await declare_pool(publisher, namespace.topo, declared, POOL)
    return ParkingLots(connection, publisher, declared, namespace.topo, timeout=5.0)


async def _park(lots: ParkingLots, count: int) -> list[str]:
    """`count` tasks put straight into the pool's parking lot."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    for task_id in ids:
        task = TaskMessage.model_validate(
            {
                "task_id": task_id,
                "from": "master",
                "to": POOL,
                "type": "task",
                "cmd": "echo",
                "created_at": utcnow(),
            }
        )
        await amqp.publish(
            lots.publisher.default_exchange,
            lots.topo.parked_queue(lots.topo.pool_queue(POOL)),
            task,
            task_id,
            timeout=5.0,
            message_type="task",
        )
    return ids


@pytest.fixture
async def connections(namespace: Namespace) -> contextlib.AsyncExitStack:  # type: ignore[misc]
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def _connect(
    namespace: Namespace, stack: contextlib.AsyncExitStack
) -> AbstractRobustConnection:
    connection = await amqp.connect(BusSettings(amqp_url=namespace.amqp_url), "test-parking")
    stack.push_async_callback(connection.close)
    return connection


@pytest.mark.parametrize("beside", ["another connection", "the same connection"])
async def test_a_replay_beside_a_listing_finds_every_task(
    namespace: Namespace, connections: contextlib.AsyncExitStack, beside: str
) -> None:
    lister_connection = await _connect(namespace, connections)
    replayer_connection = (
        lister_connection
        if beside == "the same connection"
        else await _connect(namespace, connections)
    )
    lister = await _lots(namespace, lister_connection)
    replayer = await _lots(namespace, replayer_connection)
    ids = await _park(lister, PARKED)

    listing = asyncio.Event()
    stop = asyncio.Event()

    async def list_again_and_again() -> int:
        listings = 0
        while not stop.is_set():
            await lister.peek([POOL], limit=PARKED)
            listings += 1
            listing.set()
        return listings

    lister_task = asyncio.create_task(list_again_and_again())
    try:
        await asyncio.wait_for(listing.wait(), 10)
        replayed = [await replayer.replay([POOL], task_id) for task_id in ids]
    finally:
        stop.set()
        listings = await lister_task
    assert replayed == [1] * PARKED  # without the lock, a replay answered 0: "not parked"
    assert listings > 1
    assert await lister.peek([POOL]) == []
    assert namespace.queue_depth(namespace.topo.pool_queue(POOL)) == PARKED


async def test_a_replay_waits_its_turn_beside_a_holder_that_takes_the_lock_straight_back(
    namespace: Namespace, connections: contextlib.AsyncExitStack
) -> None:
    lister = await _lots(namespace, await _connect(namespace, connections))
    replayer = await _lots(namespace, await _connect(namespace, connections))
    ids = await _park(lister, 3)
    holds = 0
    holding = asyncio.Event()
    stop = asyncio.Event()

    async def hold_again_and_again() -> None:
        # A listing that takes the lot again the moment it lets it go: the lock is free only
        # for the few milliseconds in between, where a replay's tries seldom fall.
        nonlocal holds
        while not stop.is_set():
            async with lister._held(POOL):
                holds += 1
                holding.set()
                await asyncio.sleep(0.3)

    holder = asyncio.create_task(hold_again_and_again())
    replayed, holds_while_waiting = [], []
    try:
        await asyncio.wait_for(holding.wait(), 10)
        for task_id in ids:
            holds_before = holds
            replayed.append(await replayer.replay([POOL], task_id))
            holds_while_waiting.append(holds - holds_before)
    finally:
        stop.set()
        await holder
    # Each replay waits for the hold it found, and at most one that began as it came. Without
    # the turn, a replay got in only when a try fell in a gap: after many holds, or never.
    assert max(holds_while_waiting) <= 1, holds_while_waiting
    assert replayed == [1, 1, 1]
    assert await lister.peek([POOL]) == []


async def test_a_purge_beside_a_listing_drops_what_the_listing_held(
    namespace: Namespace, connections: contextlib.AsyncExitStack
) -> None:
    lister = await _lots(namespace, await _connect(namespace, connections))
    purger = await _lots(namespace, await _connect(namespace, connections))
    await _park(lister, PARKED)
    async with lister._held(POOL) as held:
        assert len(held) == PARKED
        purge = asyncio.create_task(purger.purge([POOL]))
        # Unlocked, a purge ends in milliseconds here (having dropped none of the held twelve):
        # locked, it waits for the listing.
        done, _ = await asyncio.wait({purge}, timeout=0.5)
        assert not done
    assert await purge == PARKED
    assert await lister.peek([POOL]) == []


async def test_a_lock_held_too_long_is_a_clear_error_and_one_let_go_is_free(
    namespace: Namespace, connections: contextlib.AsyncExitStack
) -> None:
    holder = await _connect(namespace, connections)
    lots = await _lots(namespace, await _connect(namespace, connections))
    lots.timeout = 0.3
    lock_queue = namespace.topo.parking_lock_queue(POOL)
    channel = await holder.channel()
    await channel.declare_queue(lock_queue, exclusive=True, robust=False)
    with pytest.raises(BrokerUnavailable, match="busy with another operation"):
        await lots.peek([POOL])
    # The holder's connection dies: RabbitMQ drops its lock with it.
    await holder.close()
    assert await lots.peek([POOL]) == []
    # An operation let its lock go: another connection takes it at once, and holds it.
    other = await (await _connect(namespace, connections)).channel()
    await other.declare_queue(lock_queue, exclusive=True, robust=False)
    with pytest.raises(BrokerUnavailable):
        await lots.purge([POOL])
