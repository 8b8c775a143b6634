"""What is overdue: leases of long runs whose child fell silent (the tracker sends the task
again), and deadlines passed by tasks never started (the tracker ends them `expired`).

A child acks a run's delivery once the run has lasted RELAY_HOLD_DELIVERY (RabbitMQ would take
the delivery back at its consumer timeout) and publishes a `lease` with the task in it; its
heartbeats (`progress` events) renew the lease. A task row still `processing` whose lease ran
out is the tracker's to settle: it publishes the task from the lease to the pool again (attempt
+ 1, confirmed), then records `lease_expired`, which makes the row `retrying`. After
MAX_LEASE_EXPIRIES expiries the task is parked instead, as a crash loop is.

A task still `scheduled`, `pending`, `retrying` or `input_required` EXPIRY_GRACE past its
deadline ends `expired`: a child would not start it now (it checks the deadline itself, with
the same event id, so the log keeps one entry); the grace covers a child's clock running
behind.

A tracker sweeps only what was overdue at a moment up to which it has recorded every event: it
sends a marker through its own queue every RELAY_LEASE_SWEEP_EVERY, and sweeps once it has
committed the batch that holds it, for the moment it sent it. A heartbeat, or the `processing`
of a task started in time, still waiting in its queue must not count as a silence. A standby
tracker (the queue has a single active consumer) never reads its own marker: it never sweeps.

An answer the API recorded (`task_answers`) but did not publish, ANSWER_GRACE old, to the
question its task still waits on, is applied by the sweep: the `input` entry the API's own
event would have made (the same id: recorded once, whichever comes).

Publish first, record second: a tracker that dies between the two sends the task once more on
its next sweep, which a child may run a second time (never zero times).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError
from sqlalchemy import func, select

from services.tracker.lifecycle import Entry
from services.tracker.store import Store
from shared import amqp, metrics
from shared.db import connection
from shared.ids import (
    answer_event_id,
    expired_event_id,
    lease_expired_event_id,
    new_event_id,
    utc_iso,
    utcnow,
)
from shared.models import LogEntry, Task, TaskAnswer
from shared.schemas import Event, TaskMessage, deadline_missed
from shared.topology import Declared, Topology, declare_core

log = logging.getLogger(__name__)

_TASKS = Task.__table__  # type: ignore[attr-defined]
_LOG = LogEntry.__table__  # type: ignore[attr-defined]
_ANSWERS = TaskAnswer.__table__  # type: ignore[attr-defined]
#: A task whose leases expired this many times is parked (its handler may kill its child).
MAX_LEASE_EXPIRIES = 5
#: The `type` of the tracker's markers (services/tracker/consumer.py records nothing of them).
MARKER_TYPE = "tracker-marker"
#: A marker not back after this long is taken for lost (the tracker's queue was purged, say).
_MARKER_LOST = timedelta(minutes=1)
#: Leases, and tasks past their deadline, settled in one sweep at most (each).
_PER_SWEEP = 100
#: The states of a task no child runs now: past its deadline, it never will (a task that waits
#: for an answer included: answered late, it would run past its deadline).
_NOT_STARTED = ("scheduled", "pending", "retrying", "input_required")
#: A task is expired by the tracker this long after its deadline (children's clocks may lag).
EXPIRY_GRACE = timedelta(seconds=5)
#: An answer the API recorded this long ago, to a question its task still waits on, is applied
#: by the tracker (the API publishes it at once: one that did not died or lost the broker).
ANSWER_GRACE = timedelta(seconds=30)


class OverdueSweep:
    """Finds expired leases and passed deadlines; sends the tasks of the one again (over a
    channel of its own) and ends the others `expired`."""

    def __init__(self, connection: AbstractRobustConnection, store: Store, topo: Topology) -> None:
        self.connection = connection
        self.store = store
        self.engine = store.engine
        self.topo = topo
        self._publisher: AbstractChannel | None = None
        self._declared: Declared | None = None
        #: The marker on its way through the tracker's queue, and when it was sent.
        self._marker: tuple[str, datetime] | None = None

    async def mark(self) -> None:
        """Send a marker through the tracker's queue, unless one is on its way: when the
        tracker reads it back, it has read everything sent before it (`saw`)."""
        now = utcnow()
        if self._marker is not None and now - self._marker[1] < _MARKER_LOST:
            return
        marker = new_event_id()
        try:
            declared = await self._channel()
            assert self._publisher is not None
            await amqp.publish(
                self._publisher.default_exchange,
                declared.tracker.name,
                marker.encode(),
                marker,
                timeout=10,
                message_type=MARKER_TYPE,
            )
        except Exception as exc:  # only the sweep waits: the next tick tries again
            log.warning("tracker marker not sent: %r", exc)
            return
        self._marker = (marker, now)

    def saw(self, batch: Iterable[DeliveredMessage]) -> datetime | None:
        """When our marker was sent, if this batch (committed) holds it: the tracker has
        recorded everything sent before then."""
        if self._marker is None:
            return None
        marker, sent_at = self._marker
        for message in batch:
            if is_marker(message) and message.body == marker.encode():
                self._marker = None
                return sent_at
        return None

    async def sweep(self, caught_up_at: datetime) -> int:
        """Settle what was overdue at `caught_up_at`, a moment up to which the tracker has
        recorded every event; how many were."""
        try:
            count = 0
            for row in await self._expired(caught_up_at):
                await self._settle(row)
                count += 1
            answers = [_answer(row) for row in await self._unapplied(caught_up_at - ANSWER_GRACE)]
            if answers:
                log.warning("%d answers recorded but never published: applying them", len(answers))
                await self.store.write(answers)
            ended = [_expiry(row) for row in await self._past_deadline(caught_up_at - EXPIRY_GRACE)]
            if ended:
                await self.store.write(ended)
                metrics.TRACKER_EXPIRED.inc(len(ended))
                log.info("%d tasks expired: not started by their deadline", len(ended))
            return count + len(ended)
        except Exception as exc:  # a failed sweep must not stop the tracker
            log.warning("sweep of overdue tasks failed, trying again later: %r", exc)
            return 0

    async def _past_deadline(self, cutoff: datetime) -> list[dict[str, Any]]:
        query = (
            select(
                _TASKS.c.task_id,
                _TASKS.c.conversation_id,
                _TASKS.c.deadline,
                _TASKS.c.attempts,
                _TASKS.c.state,
            )
            .where(_TASKS.c.deadline < cutoff, _TASKS.c.state.in_(_NOT_STARTED))
            .order_by(_TASKS.c.deadline)
            .limit(_PER_SWEEP)
        )
        async with connection(self.engine) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def _unapplied(self, cutoff: datetime) -> list[dict[str, Any]]:
        """Answers the API recorded before `cutoff` to a question their task still waits on:
        the API died (or lost the broker) before publishing them."""
        query = (
            select(_ANSWERS, _TASKS.c.conversation_id, _TASKS.c.recipient)
            .join(_TASKS, _TASKS.c.task_id == _ANSWERS.c.task_id)
            .where(
                _TASKS.c.state == "input_required",
                _TASKS.c.input_round == _ANSWERS.c.round,
                _ANSWERS.c.answered_at < cutoff,
            )
            .limit(_PER_SWEEP)
        )
        async with connection(self.engine) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def _expired(self, now: datetime) -> list[dict[str, Any]]:
        query = (
            select(_TASKS.c.task_id, _TASKS.c.attempts, _TASKS.c.child_id, _TASKS.c.lease_until)
            .where(_TASKS.c.lease_until < now, _TASKS.c.state == "processing")
            .order_by(_TASKS.c.lease_until)
            .limit(_PER_SWEEP)
        )
        async with connection(self.engine) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def _settle(self, row: dict[str, Any]) -> None:
        task_id, attempt = row["task_id"], row["attempts"]
        lease, expiries = await self._lease_of(task_id)
        silent = f"lease expired: child {row['child_id']} silent, its lease ran out at " + (
            row["lease_until"].isoformat()
        )
        if lease is None:
            # Not one the bus wrote (the row says leased, the log has no lease): nothing to send.
            log.error("task %s: %s, and its lease entry is unreadable", task_id, silent)
            await self._record(task_id, None, attempt, row["child_id"], f"{silent}; not resent")
            return
        task, replays = lease
        declared = await self._channel()
        if expiries + 1 >= MAX_LEASE_EXPIRIES:
            reason = f"{silent} ({expiries + 1} times): parked"
            log.error("parking task %s: %s", task_id, reason)
            await amqp.publish(
                declared.dead,
                self.topo.parked_queue(self.topo.pool_queue(task.to)),
                task,
                task_id,
                timeout=10,
                message_type="task",
                headers={
                    amqp.ATTEMPT_HEADER: attempt,
                    amqp.DEAD_REASON_HEADER: reason[:1000],
                    amqp.PARKED_ID_HEADER: new_event_id(),
                    amqp.REPLAYS_HEADER: replays,
                },
            )
        else:
            log.warning("task %s: %s; sending it again (attempt %d)", task_id, silent, attempt + 1)
            await amqp.publish(
                declared.tasks_of(task.priority),
                self.topo.task_routing_key(task.to),
                task,
                task_id,
                timeout=10,
                message_type="task",
                headers={
                    amqp.ATTEMPT_HEADER: attempt + 1,
                    amqp.LAST_ERROR_HEADER: silent[:1000],
                    amqp.REPLAYS_HEADER: replays,
                },
            )
        await self._record(task_id, task.conversation_id, attempt, row["child_id"], silent)
        metrics.TRACKER_LEASES_EXPIRED.inc()

    async def _lease_of(self, task_id: str) -> tuple[tuple[TaskMessage, int] | None, int]:
        """The task and its replays as the last lease carried them, and the expiries so far."""
        last = (
            select(_LOG.c.data)
            .where(_LOG.c.task_id == task_id, _LOG.c.event == "lease")
            .order_by(_LOG.c.id.desc())
            .limit(1)
        )
        expiries = select(func.count()).where(
            _LOG.c.task_id == task_id, _LOG.c.event == "lease_expired"
        )
        async with connection(self.engine) as conn:
            data = (await conn.execute(last)).scalar_one_or_none()
            count = (await conn.execute(expiries)).scalar_one()
        if not isinstance(data, dict) or not isinstance(data.get("task"), dict):
            return None, count
        try:
            task = TaskMessage.model_validate(data["task"])
        except ValidationError:
            return None, count
        replays = data.get("replays")
        return (task, replays if isinstance(replays, int) else 0), count

    async def _record(
        self, task_id: str, conversation_id: str | None, attempt: int, child: str | None, error: str
    ) -> None:
        now = utcnow()
        event = Event(
            event_id=lease_expired_event_id(task_id, attempt),
            event="lease_expired",
            ts=now,
            task_id=task_id,
            conversation_id=conversation_id,
            child_id=child,
            attempt=attempt,
            error=error,
            next_at=now,
        )
        await self.store.write([Entry.from_event(event)])

    async def _channel(self) -> Declared:
        if self._publisher is None or self._publisher.is_closed or self._declared is None:
            self._publisher = await amqp.open_publisher_channel(self.connection)
            self._declared = await declare_core(self._publisher, self.topo)
        return self._declared

    async def close(self) -> None:
        channel = self._publisher
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except Exception as exc:  # closing anyway: the connection goes next
                log.debug("overdue sweep's channel not closed cleanly: %r", exc)


def _answer(row: dict[str, Any]) -> Entry:
    """The `input` entry of an answer the API recorded: the same entry as its own would be."""
    return Entry.from_event(
        Event(
            event_id=answer_event_id(row["task_id"], row["round"]),
            event="input",
            ts=utcnow(),
            task_id=row["task_id"],
            conversation_id=row["conversation_id"],
            from_=row["answered_by"],
            to=row["recipient"],
            round=row["round"],
            answer=row["answer"],
        )
    )


def _expiry(row: dict[str, Any]) -> Entry:
    return Entry.from_event(
        Event(
            event_id=expired_event_id(row["task_id"]),
            event="expired",
            ts=utcnow(),
            task_id=row["task_id"],
            conversation_id=row["conversation_id"],
            attempt=row["attempts"] or None,
            error=(
                f"no answer by its deadline {utc_iso(row['deadline'])}"
                if row["state"] == "input_required"
                else deadline_missed(row["deadline"])
            ),
        )
    )


def is_marker(message: DeliveredMessage) -> bool:
    """Whether a message on the tracker's queue is a tracker's marker, not a task or event."""
    return message.exchange == "" and message.header.properties.message_type == MARKER_TYPE
