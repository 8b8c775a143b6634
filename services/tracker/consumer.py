"""The tracker's consumer: events in batches, one transaction each, acked after the commit."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.batching import early_batches
from services.tracker.lifecycle import Entry
from services.tracker.notices import CommitNotices
from services.tracker.outbox import Outbox
from services.tracker.overdue import OverdueSweep, is_marker
from services.tracker.pruning import pruning
from services.tracker.queue_stats import QueueWatch
from services.tracker.store import BadBatch, Store
from services.tracker.subscription import Subscription
from shared import amqp, metrics
from shared.backoff import Backoff, retry
from shared.db import make_engine
from shared.errors import BrokerUnavailable, DatabaseUnavailable
from shared.ids import utcnow
from shared.migrate import claim, require_current
from shared.ops import OpsServer
from shared.schemas import Event, TaskMessage
from shared.settings import TrackerSettings
from shared.topology import Topology, declare_core

log = logging.getLogger(__name__)


def parse(message: DeliveredMessage, topo: Topology) -> list[Entry]:
    """The entries a message on the tracker's queue stands for; ValidationError if it is poison.

    One, except a callback naming its run: the run's `processing` entry comes first.
    """
    if message.exchange in (topo.tasks_exchange, topo.high_tasks_exchange):
        return [Entry.from_task(TaskMessage.model_validate_json(message.body))]
    if message.exchange == topo.dead_exchange:
        return [Entry.from_event(parked_event(message))]
    entry = Entry.from_event(Event.model_validate_json(message.body))
    started = entry.run_started()
    return [entry] if started is None else [started, entry]


_DEATH_REASONS = {
    "rejected": "poison message: not valid JSON or not a valid task",
    "delivery_limit": "poison message: delivered too many times without being settled "
    "(does its handler crash the worker?)",
}


def parked_event(message: DeliveredMessage) -> Event:
    """A `dead` event for a message that went into a pool's parking lot.

    The child parks a task out of retries with a reason and an id in its headers; RabbitMQ
    dead-letters poison (rejected, or past the delivery limit) with an x-death header.
    """
    properties = message.header.properties
    headers = properties.headers or {}
    death = amqp.newest_death(headers)
    death_reason = amqp.header_text(death.get("reason"))
    reason = amqp.header_text(headers.get(amqp.DEAD_REASON_HEADER)) or _DEATH_REASONS.get(
        death_reason, f"dead-lettered: {death_reason}"
    )
    parked_id = headers.get(amqp.PARKED_ID_HEADER)
    if not isinstance(parked_id, str):
        key = "|".join(
            str(part)
            for part in (
                properties.message_id or hashlib.sha256(message.body).hexdigest(),
                headers.get(amqp.REPLAYS_HEADER, 0),
                death_reason,
                death.get("count"),
                death.get("time"),
            )
        )
        parked_id = "dead_" + hashlib.sha256(key.encode()).hexdigest()[:32]
    attempt = headers.get(amqp.ATTEMPT_HEADER)
    fields: dict[str, object] = {
        "event_id": parked_id,
        "event": "dead",
        "ts": utcnow(),
        "error": reason[:10_000],
        "queue": message.routing_key,
        "attempt": attempt if isinstance(attempt, int) and attempt >= 1 else None,
    }
    try:
        task = TaskMessage.model_validate_json(message.body)
    except ValidationError:
        return Event.model_validate(fields)
    return Event.model_validate(
        {
            **fields,
            "task_id": task.task_id,
            "conversation_id": task.conversation_id,
            "from": task.from_,
            "to": task.to,
        }
    )


class _Stopping(Exception):
    """The tracker was asked to stop while it waited for the database."""


class Tracker:
    """Consumes the tracker queue into the database until `stop` is set."""

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self.topo = Topology(settings.namespace)
        self.stop = asyncio.Event()
        self.written = 0
        self._inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self._connection: AbstractRobustConnection | None = None
        self._engine: AsyncEngine | None = None
        self._subscription: Subscription | None = None
        self._early = early_batches(settings.batch_wait)
        #: While the database is down: a try every RELAY_DB_RETRY seconds (with jitter).
        self._db_backoff = Backoff(first=settings.db_retry, factor=1.0)
        self.ops = OpsServer(settings.ops_host, settings.ops_port, self.readiness)

    async def readiness(self) -> dict[str, bool]:
        """Whether the tracker consumes from RabbitMQ and reaches its database."""
        broker = (
            self._subscription is not None
            and self._subscription.active
            and self._connection is not None
            and self._connection.connected.is_set()
        )
        database = False
        if self._engine is not None:
            try:
                async with asyncio.timeout(2):
                    await Store(self._engine).ping()
                database = True
            except (TimeoutError, DatabaseUnavailable):
                pass
        return {"broker": broker, "database": database}

    async def run(self) -> None:
        engine = self._engine = make_engine(self.settings.database_url.get_secret_value())
        await self.ops.start()
        try:
            store = Store(engine)
            if not await self._wait_for_schema(store):
                return
            connection = await amqp.connect_with_retry(self.settings, "convbus-tracker", self.stop)
            self._connection = connection
            # What the tracker tells others (notices, webhook deliveries) goes out on a
            # connection of its own: a broker blocking publishers never stops the consumer.
            publishing = await amqp.connect_with_retry(
                self.settings, "convbus-tracker-publish", self.stop
            )
            notices = CommitNotices(publishing, self.topo)
            store.on_commit = notices.committed
            outbox = Outbox(publishing, engine, self.topo)
            stats = QueueWatch(connection, self.topo, engine, self.settings.queue_stats_every)
            try:
                async with stats.running(), pruning(engine, self.settings):
                    await self._consume(connection, store, stats, outbox)
            except _Stopping:
                pass
            finally:
                self._subscription = None
                store.on_commit = None
                await notices.close()
                await outbox.close()
                await publishing.close()
                await connection.close()
        except BrokerUnavailable:
            if not self.stop.is_set():
                raise
        finally:
            await self.ops.close()
            await engine.dispose()
            log.info("tracker stopped after %d new entries", self.written)

    async def _consume(
        self, connection: AbstractRobustConnection, store: Store, stats: QueueWatch, outbox: Outbox
    ) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.settings.batch_size * 2)
        await declare_core(channel, self.topo)
        subscription = Subscription(channel, self.topo.tracker_queue, self._inbox.put_nowait)
        await subscription.start()
        self._subscription = subscription
        log.info("tracker consuming %s", self.topo.tracker_queue)
        overdue = OverdueSweep(connection, store, self.topo)
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.settings.lease_sweep_every
        try:
            while not self.stop.is_set():
                batch = await self._next_batch(max(0.0, next_sweep - loop.time()))
                if batch:
                    stats.saw(batch)
                    await self._record(store, batch)
                    if (caught_up_at := overdue.saw(batch)) is not None:
                        # Between batches: the sweep's writes never race this tracker's own.
                        await overdue.sweep(caught_up_at)
                if store.outbox_filled:
                    store.outbox_filled = False
                    outbox.wake()
                if loop.time() >= next_sweep:
                    await overdue.mark()
                    if subscription.active:
                        # What a failed flush left, or a tracker that stopped before its flush.
                        outbox.wake()
                    next_sweep = loop.time() + self.settings.lease_sweep_every
        finally:
            await overdue.close()
            await subscription.stop()

    async def _wait_for_schema(self, store: Store) -> bool:
        """Check the schema is current and this namespace's once the database answers
        (ConfigError if not); False if stopped before that."""
        try:
            await retry(
                lambda _: self._require_schema(store),
                DatabaseUnavailable,
                self._db_backoff,
                log=log,
                what="database not ready",
                stop=self.stop,
            )
        except DatabaseUnavailable:
            return False  # stopped
        return True

    async def _require_schema(self, store: Store) -> None:
        await require_current(store.engine)
        await claim(store.engine, self.settings.namespace)

    async def _next_batch(self, first_within: float | None = None) -> list[DeliveredMessage]:
        """The next messages: waits for the first (up to `first_within` seconds), then for more
        until the batch is full, batch_wait has passed, or (within the early budget) none came
        for batch_idle."""
        stopping = asyncio.ensure_future(self.stop.wait())
        first = asyncio.ensure_future(self._inbox.get())
        try:
            await asyncio.wait(
                {stopping, first}, timeout=first_within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if not first.done():
            first.cancel()
            return []
        batch = [first.result()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.batch_wait
        idle = self.settings.batch_idle
        while len(batch) < self.settings.batch_size:
            if not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
                continue
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                break
            early = 0 < idle < remaining and self._early.wait(now) == 0
            try:
                batch.append(
                    await asyncio.wait_for(self._inbox.get(), idle if early else remaining)
                )
            except TimeoutError:
                if early:
                    self._early.take(loop.time())
                    metrics.TRACKER_EARLY_BATCHES.inc()
                break
        return batch

    async def _record(self, store: Store, batch: list[DeliveredMessage]) -> None:
        metrics.TRACKER_BATCH.observe(len(batch))
        entries: list[tuple[DeliveredMessage, list[Entry]]] = []
        for message in batch:
            if is_marker(message):
                entries.append((message, []))  # acked with the batch; OverdueSweep.saw reads it
                continue
            try:
                entries.append((message, parse(message, self.topo)))
            except ValidationError as exc:
                log.error(
                    "parking a message that is not a valid task or event (message_id=%s): %s",
                    _message_id(message),
                    exc.errors(include_input=False)[:3],
                )
                metrics.TRACKER_PARKED.inc()
                await _settle(message, park=True)
        try:
            await self._write(store, [e for _, parsed in entries for e in parsed])
        except BadBatch:
            for message, parsed in entries:
                try:
                    await self._write(store, parsed)
                except BadBatch as exc:
                    log.error("parking event %s the database refused: %s", parsed[-1].event_id, exc)
                    metrics.TRACKER_PARKED.inc()
                    await _settle(message, park=True)
                else:
                    await _settle(message, park=False)
            return
        await _ack_batch([message for message, _ in entries])

    async def _write(self, store: Store, entries: Sequence[Entry]) -> None:
        """Write, waiting out a database outage; raises BadBatch, or _Stopping if stopped."""

        async def write(_attempt: int) -> int:
            started = time.perf_counter()
            written = await store.write(entries)
            metrics.TRACKER_WRITE.observe(time.perf_counter() - started)
            return written

        what = f"holding {len(entries)} events unacked"
        try:
            written = await retry(
                write, DatabaseUnavailable, self._db_backoff, log=log, what=what, stop=self.stop
            )
        except DatabaseUnavailable as exc:
            # Unacked: RabbitMQ hands them to the next tracker when this one closes.
            raise _Stopping from exc
        metrics.TRACKER_EVENTS.inc(written)
        self.written += written


async def _ack_batch(messages: Sequence[DeliveredMessage]) -> None:
    """Ack a committed batch with one frame per channel (`multiple`, up to its last delivery).

    The tracker settles every batch before it takes the next, so on a channel every delivery
    up to the batch's last is in this batch, or was settled already (a parked one).
    """
    last: dict[int, DeliveredMessage] = {}
    orphans = 0
    for message in messages:  # in delivery order: the last one per channel has the top tag
        if message.channel.is_closed:
            orphans += 1
        else:
            last[id(message.channel)] = message
    if orphans:
        # Their channel closed (the broker went away): RabbitMQ delivers them again, and the
        # log keeps one entry per event id.
        log.warning("%d written events not acked: their channel is closed", orphans)
    for message in last.values():
        try:
            await message.channel.basic_ack(_tag(message), multiple=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "could not ack a batch up to %s (%r); it will be redelivered",
                _message_id(message),
                exc,
            )


async def _settle(message: DeliveredMessage, *, park: bool) -> None:
    """Ack, or reject into the parked queue; a failed ack is logged (the event comes again)."""
    try:
        if park:
            await message.channel.basic_reject(_tag(message), requeue=False)
        else:
            await message.channel.basic_ack(_tag(message))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error(
            "could not settle message %s (%r); it will be redelivered",
            _message_id(message),
            exc,
        )


def _message_id(message: DeliveredMessage) -> str | None:
    return message.header.properties.message_id


def _tag(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None, "a consumed message has a delivery tag"
    return tag
