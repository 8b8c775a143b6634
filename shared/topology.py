"""Every exchange, queue, binding and queue argument of the bus, declared in one place.

Names (``ns`` is RELAY_NAMESPACE):

- ``{ns}.tasks``   topic exchange; a task is published with routing key = its pool.
- ``{ns}.events``  topic exchange; an event is published with routing key = its event name.
- ``{ns}.dead``    topic exchange; what a queue sets aside goes here, keyed by the parked queue.
- ``{ns}.tasks.high`` topic exchange; a `high` priority task, routing key = its pool.
- ``{ns}.pool.{pool}``         quorum queue of a child pool, bound to tasks with key ``{pool}``.
- ``{ns}.high.{pool}``         the pool's quorum queue of `high` tasks, bound to tasks.high with
                               key ``{pool}``; children consume it with slots of its own, so a
                               high task never waits behind the pool's queue or its handlers.
- ``{ns}.high.{pool}.delay.{ms}``  a high task's retry waits here, then goes back to tasks.high.
- ``{ns}.pool.{pool}.parked``  the pool's parking lot: tasks out of retries, poison messages.
- ``{ns}.pool.{pool}.delay.{ms}``  a retry waits here ``ms`` milliseconds, then dead-letters back
                               to the tasks exchange with key ``{pool}``; deleted when unused.
- ``{ns}.lock.parked.{pool}``  exclusive, empty: held by the one connection working the pool's
                               parking lot (shared/parking.py), dropped with that connection.
- ``{ns}.tracker``             quorum queue of the tracker (single active consumer), bound to
                               tasks, tasks.high and events with ``#`` (every send and event),
                               and to dead with ``{ns}.pool.#`` (every task parked).
- ``{ns}.tracker.parked``      where the tracker sets aside what it cannot read.
- ``{ns}.control.{child}-{id}``  a child's own queue of cancels (exclusive, auto-delete), bound
                               to events with ``cancel``: the live half of services/child/
                               cancels.py; the API's database holds every cancel for the rest.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustQueue,
    ExchangeType,
)

from shared.contract import NAME_PATTERN
from shared.errors import ConfigError

POOL_PATTERN = re.compile(NAME_PATTERN)
#: `x.parked` or `x.delay.100` as a pool would be pool x's parking lot or delay queue (a JSON
#: Schema pattern too: the OpenAPI of a send says it).
RESERVED_POOL_PATTERN = r"(^|\.)(parked|delay)(\.|$)"
_RESERVED_POOL = re.compile(RESERVED_POOL_PATTERN)
#: The bus's own pool: webhook deliveries, which the tracker sends (`convbus webhooks` serves
#: it). No client sends a task there.
WEBHOOK_POOL = "_webhooks"
#: A message delivered this many times without an ack (crash loops) is set aside.
DELIVERY_LIMIT = 20
#: Parked messages are read (and returned) by `convbus dlq list`; RabbitMQ 4 would otherwise
#: drop them after its default limit of 20 returns.
PARKED_DELIVERY_LIMIT = 1_000_000
#: A delay queue nobody declared for this long is deleted (its messages left long before).
DELAY_QUEUE_IDLE_MS = 600_000
#: How far back a child reads the cancels when it (re)connects; it asks the API about a task
#: older than that before it starts it (services/child/cancels.py).
CONTROL_MAX_AGE_DAYS = 7
#: Events every child hears, on a queue of its own.
CONTROL_EVENTS = ("cancel",)
_PARKED_SUFFIX = ".parked"
_DELAY_SUFFIX = re.compile(r"\.delay\.([0-9]+)$")

QueueKind = Literal[
    "pool",
    "parked",
    "delay",
    "tracker",
    "tracker_parked",
    "control",
    "high",
    "high_delay",
    "notices",
]
#: A task's priority: `high` ones have their own queue and handler slots in every pool.
Priority = Literal["normal", "high"]


@dataclass(frozen=True)
class QueueRole:
    """What a queue of a namespace is: its kind, its pool (None for the tracker's), its delay."""

    kind: QueueKind
    pool: str | None = None
    delay_ms: int | None = None


@dataclass(frozen=True)
class Topology:
    """The names and arguments of one bus namespace."""

    namespace: str

    @property
    def tasks_exchange(self) -> str:
        return f"{self.namespace}.tasks"

    @property
    def high_tasks_exchange(self) -> str:
        return f"{self.namespace}.tasks.high"

    def tasks_exchange_of(self, priority: str | None) -> str:
        """Where a task of this priority is published (None: normal)."""
        return self.high_tasks_exchange if priority == "high" else self.tasks_exchange

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def committed_exchange(self) -> str:
        """Fanout of the tracker's commit notices, to every API replica."""
        return f"{self.namespace}.committed"

    @property
    def tracker_queue(self) -> str:
        return f"{self.namespace}.tracker"

    def notices_queue(self, unique: str) -> str:
        """An API replica's own queue of commit notices."""
        return f"{self.namespace}.committed.api-{unique}"

    def control_queue(self, child_id: str, unique: str) -> str:
        """A child's own queue of the events every child hears (`cancel`)."""
        return f"{self.namespace}.control.{child_id}-{unique}"

    @staticmethod
    def is_pool_name(name: str) -> bool:
        """1-64 of [A-Za-z0-9_.:-], and not a name that would collide with a pool's own queues."""
        return bool(POOL_PATTERN.fullmatch(name)) and not _RESERVED_POOL.search(name)

    def pool_queue(self, pool: str) -> str:
        if not self.is_pool_name(pool):
            raise ValueError(f"invalid pool name {pool!r}")
        return f"{self._pool_prefix}{pool}"

    @property
    def _pool_prefix(self) -> str:
        return f"{self.namespace}.pool."

    @property
    def _high_prefix(self) -> str:
        return f"{self.namespace}.high."

    def high_queue(self, pool: str) -> str:
        """The pool's queue of `high` tasks."""
        if not self.is_pool_name(pool):
            raise ValueError(f"invalid pool name {pool!r}")
        return f"{self._high_prefix}{pool}"

    def queue_of(self, pool: str, priority: str | None) -> str:
        """The queue a task of this priority waits in (None: normal)."""
        return self.high_queue(pool) if priority == "high" else self.pool_queue(pool)

    @staticmethod
    def parked_queue(queue: str) -> str:
        return f"{queue}{_PARKED_SUFFIX}"

    def parking_lock_queue(self, pool: str) -> str:
        """The queue whose exclusive owner alone works the pool's parking lot."""
        if not self.is_pool_name(pool):
            raise ValueError(f"invalid pool name {pool!r}")
        return f"{self.namespace}.lock.parked.{pool}"

    def parking_turn_queue(self, pool: str) -> str:
        """The queue whose exclusive owner is next in line for the pool's parking lot."""
        return f"{self.parking_lock_queue(pool)}.next"

    def delay_queue(self, pool: str, delay_ms: int, priority: str | None = None) -> str:
        return f"{self.queue_of(pool, priority)}.delay.{delay_ms}"

    @property
    def name_prefix(self) -> str:
        """What every exchange and queue name of this namespace starts with."""
        return f"{self.namespace}."

    def classify(self, queue: str) -> QueueRole | None:
        """What `queue` is in this namespace; None for another namespace's or an unknown queue."""
        if queue == self.tracker_queue:
            return QueueRole("tracker")
        if queue == self.parked_queue(self.tracker_queue):
            return QueueRole("tracker_parked")
        if queue.startswith(f"{self.namespace}.control."):
            return QueueRole("control")
        if queue.startswith(f"{self.committed_exchange}.api-"):
            return QueueRole("notices")
        if queue.startswith(self._high_prefix):
            rest = queue[len(self._high_prefix) :]
            high = QueueRole("high", rest)
            if delay := _DELAY_SUFFIX.search(rest):
                rest = rest[: delay.start()]
                high = QueueRole("high_delay", rest, int(delay.group(1)))
            return high if self.is_pool_name(rest) else None
        if not queue.startswith(self._pool_prefix):
            return None
        rest = queue[len(self._pool_prefix) :]
        role: QueueRole
        # Unambiguous: a pool's name never holds a `parked` or `delay` segment (is_pool_name).
        if rest.endswith(_PARKED_SUFFIX):
            rest = rest[: -len(_PARKED_SUFFIX)]
            role = QueueRole("parked", rest)
        elif delay := _DELAY_SUFFIX.search(rest):
            rest = rest[: delay.start()]
            role = QueueRole("delay", rest, int(delay.group(1)))
        else:
            role = QueueRole("pool", rest)
        return role if self.is_pool_name(rest) else None

    @property
    def parked_pools_pattern(self) -> str:
        """The dead exchange's keys of every pool's parking lot (not the tracker's own)."""
        return f"{self.namespace}.pool.#"

    @staticmethod
    def task_routing_key(pool: str) -> str:
        return pool

    @staticmethod
    def event_routing_key(event: str) -> str:
        return event

    def work_queue_arguments(self, queue: str, **extra: Any) -> dict[str, Any]:
        """Arguments of a queue whose poison messages are set aside in its parked queue.

        At-least-once dead-lettering (RabbitMQ >= 3.10) needs ``reject-publish`` overflow; with
        it a message never vanishes between the work queue and the parked queue.
        """
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": self.parked_queue(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": DELIVERY_LIMIT,
            **extra,
        }

    @staticmethod
    def parked_queue_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-delivery-limit": PARKED_DELIVERY_LIMIT}

    def delay_queue_arguments(
        self, pool: str, delay_ms: int, priority: str | None = None
    ) -> dict[str, Any]:
        """A retry's waiting room: at-least-once back to the pool when its time is up."""
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": self.tasks_exchange_of(priority),
            "x-dead-letter-routing-key": self.task_routing_key(pool),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-expires": delay_ms + DELAY_QUEUE_IDLE_MS,
        }

    def tracker_queue_arguments(self) -> dict[str, Any]:
        return self.work_queue_arguments(self.tracker_queue, **{"x-single-active-consumer": True})

    def pool_queue_arguments(self, pool: str) -> dict[str, Any]:
        return self.work_queue_arguments(self.pool_queue(pool))

    def high_queue_arguments(self, pool: str) -> dict[str, Any]:
        """Those of the pool's queue: its poison goes to the pool's parking lot too."""
        return self.work_queue_arguments(self.pool_queue(pool))

    def names(self, pools: list[str]) -> tuple[list[str], list[str]]:
        """(exchanges, queues) of this namespace for these pools: what a cleanup deletes."""
        queues = [self.tracker_queue, self.parked_queue(self.tracker_queue)]
        for pool in pools:
            queues += [self.pool_queue(pool), self.parked_queue(self.pool_queue(pool))]
            queues += [self.high_queue(pool)]
        exchanges = [self.tasks_exchange, self.events_exchange, self.dead_exchange]
        return [*exchanges, self.high_tasks_exchange, self.committed_exchange], queues


@dataclass
class Declared:
    """The exchanges a service publishes to, as declared on its channel."""

    tasks: AbstractExchange
    events: AbstractExchange
    dead: AbstractExchange
    tracker: AbstractQueue
    high_tasks: AbstractExchange

    def tasks_of(self, priority: str | None) -> AbstractExchange:
        """The exchange a task of this priority is published to."""
        return self.high_tasks if priority == "high" else self.tasks


async def _declare_with_parking(
    channel: AbstractChannel,
    topo: Topology,
    dead: AbstractExchange,
    queue: str,
    args: dict[str, Any],
) -> AbstractQueue:
    parked = await channel.declare_queue(
        topo.parked_queue(queue), durable=True, arguments=topo.parked_queue_arguments()
    )
    await parked.bind(dead, routing_key=topo.parked_queue(queue))
    return await channel.declare_queue(queue, durable=True, arguments=args)


@contextlib.contextmanager
def _refusals_explained(topo: Topology) -> Iterator[None]:
    """RabbitMQ refuses a redeclaration with other arguments; say what that means."""
    try:
        yield
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(
            f"RabbitMQ refused the topology of namespace {topo.namespace!r} ({exc}): an exchange "
            "or queue of that name exists with other arguments, declared by another version of "
            "the bus. Use another RELAY_NAMESPACE, or delete the old exchanges and queues."
        ) from exc


async def declare_core(channel: AbstractChannel, topo: Topology) -> Declared:
    """Declare the exchanges and the tracker's queue: every service does this at start.

    The tracker's queue is declared by all, so that no send is routed before it exists.
    """
    with _refusals_explained(topo):
        return await _declare_core(channel, topo)


async def _declare_core(channel: AbstractChannel, topo: Topology) -> Declared:
    tasks = await channel.declare_exchange(topo.tasks_exchange, ExchangeType.TOPIC, durable=True)
    events = await channel.declare_exchange(topo.events_exchange, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(topo.dead_exchange, ExchangeType.TOPIC, durable=True)
    high_tasks = await channel.declare_exchange(
        topo.high_tasks_exchange, ExchangeType.TOPIC, durable=True
    )
    tracker = await _declare_with_parking(
        channel, topo, dead, topo.tracker_queue, topo.tracker_queue_arguments()
    )
    await tracker.bind(tasks, routing_key="#")
    await tracker.bind(high_tasks, routing_key="#")
    await tracker.bind(events, routing_key="#")
    await tracker.bind(dead, routing_key=topo.parked_pools_pattern)
    return Declared(tasks=tasks, events=events, dead=dead, tracker=tracker, high_tasks=high_tasks)


async def declare_pool(
    channel: AbstractChannel, topo: Topology, declared: Declared, pool: str
) -> AbstractQueue:
    """Declare a pool's queue and its parked queue, bound to the tasks exchange."""
    with _refusals_explained(topo):
        queue = await _declare_with_parking(
            channel, topo, declared.dead, topo.pool_queue(pool), topo.pool_queue_arguments(pool)
        )
    await queue.bind(declared.tasks, routing_key=topo.task_routing_key(pool))
    return queue


async def declare_control(
    channel: AbstractRobustChannel, topo: Topology, child_id: str, unique: str
) -> AbstractRobustQueue:
    """Declare a child's own queue of cancels, bound to events; not restored by aio-pika (the
    child declares a new one after each reconnection, then reads what it missed from the API)."""
    queue = await channel.declare_queue(
        topo.control_queue(child_id, unique), exclusive=True, auto_delete=True, robust=False
    )
    assert isinstance(queue, AbstractRobustQueue)  # a robust channel's queue
    for event in CONTROL_EVENTS:
        await queue.bind(
            topo.events_exchange, routing_key=topo.event_routing_key(event), robust=False
        )
    return queue


async def declare_high(
    channel: AbstractChannel, topo: Topology, declared: Declared, pool: str
) -> AbstractQueue:
    """Declare a pool's queue of high tasks (its parking lot is the pool's), bound to tasks.high."""
    with _refusals_explained(topo):
        await declare_pool(channel, topo, declared, pool)
        queue = await channel.declare_queue(
            topo.high_queue(pool), durable=True, arguments=topo.high_queue_arguments(pool)
        )
    await queue.bind(declared.high_tasks, routing_key=topo.task_routing_key(pool))
    return queue


async def declare_delay(
    channel: AbstractChannel, topo: Topology, pool: str, delay_ms: int, priority: str | None = None
) -> str:
    """Declare (again: that keeps it from expiring) a pool's delay queue; its name.

    Not robust: aio-pika would keep an object per declaration and declare each again after a
    reconnection (one per hop and per retry, for good)."""
    name = topo.delay_queue(pool, delay_ms, priority)
    arguments = topo.delay_queue_arguments(pool, delay_ms, priority)
    if isinstance(channel, AbstractRobustChannel):
        await channel.declare_queue(name, durable=True, arguments=arguments, robust=False)
    else:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    return name


async def declare_committed(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    """Declare the fanout of commit notices (the tracker publishes, each API replica listens)."""
    with _refusals_explained(topo):
        return await channel.declare_exchange(
            topo.committed_exchange, ExchangeType.FANOUT, durable=True
        )
