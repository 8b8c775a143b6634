"""What a child tells the tracker about a run besides its outcome: `processing` (a slow run, or
one that ends in a retry or a parking), `retry` and `progress`, published best effort; and the
`lease` of a run past the child's hold, published confirmed (the delivery's ack waits for it).

The outcome travels in the callback, which names its run: the tracker derives the run's
`processing` entry from it, under the same id as the child's own event, so the log keeps one.
Losing one of these events costs only detail in the log, never the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import amqp
from shared.backoff import Backoff, retry
from shared.errors import BusError
from shared.ids import (
    expired_event_id,
    new_event_id,
    new_run_id,
    processing_event_id,
    question_event_id,
    utcnow,
)
from shared.schemas import CallbackRequest, Event, EventName, TaskMessage
from shared.topology import Declared, Topology

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run of a handler: what its `processing` entry says, and whether it was published."""

    attempt: int
    run_id: str = field(default_factory=new_run_id)
    started_at: datetime = field(default_factory=utcnow)
    processing_published: bool = False
    #: The run's delivery was acked: the tracker's lease answers for the task (worker._hold).
    leased: bool = False
    #: The hand-over from the delivery to the lease, once begun (worker._hand_over).
    handover: asyncio.Task[None] | None = None

    def fields(self) -> dict[str, Any]:
        """What the callback says of the run."""
        return {"attempt": self.attempt, "run_id": self.run_id, "started_at": self.started_at}


class RunEvents:
    """Publishes a pool's run events on the child's publisher channel, confirmed."""

    def __init__(
        self,
        declared: Declared,
        topo: Topology,
        child_id: str,
        *,
        timeout: float,
        processing_after: float,
    ) -> None:
        self.declared = declared
        self.topo = topo
        self.child_id = child_id
        self.timeout = timeout
        self.processing_after = processing_after

    def processing_when_slow(self, task: TaskMessage, run: Run) -> asyncio.Task[None]:
        """Publish the run's `processing` once the handler has run `processing_after`: a task
        the handler's end settles with `end`."""
        return asyncio.create_task(self._after_a_while(task, run))

    async def _after_a_while(self, task: TaskMessage, run: Run) -> None:
        # Even with no wait, this goes through the loop once, so a handler that never yields
        # finishes first: `end` then publishes it (processing_after 0).
        if self.processing_after > 0:
            await asyncio.sleep(self.processing_after)
        run.processing_published = True
        await self.processing(task, run.attempt, run.run_id, run.started_at)

    async def end(
        self, pending: asyncio.Task[None], task: TaskMessage, run: Run, *, publish: bool
    ) -> None:
        """The handler ended: cancel a `processing` still waiting, or (`publish`: the run ends
        in a retry, which no callback will name) publish it now."""
        if not run.processing_published:
            pending.cancel()
        await asyncio.wait({pending})  # a publish under way finishes: events keep their order
        if not pending.cancelled() and (exc := pending.exception()) is not None:
            log.warning("could not publish processing for %s: %r", task.task_id, exc)
        if (publish or self.processing_after == 0) and not run.processing_published:
            run.processing_published = True
            await self.processing(task, run.attempt, run.run_id, run.started_at)

    async def processing_of(self, task: TaskMessage, outcome: CallbackRequest) -> None:
        """The `processing` of the run that produced `outcome`, before a retry or parking,
        which the tracker records without one; a duplicate of an earlier one is recorded once."""
        if outcome.run_id is not None and outcome.started_at is not None:
            attempt = outcome.attempt or 1
            await self.processing(task, attempt, outcome.run_id, outcome.started_at)

    async def processing(
        self, task: TaskMessage, attempt: int, run_id: str, started_at: datetime
    ) -> None:
        """Tell the tracker the task started; best effort (the completion is what counts)."""
        event_id = processing_event_id(task.task_id, run_id)
        await self._softly(self._about(task, "processing", event_id, attempt, ts=started_at))

    async def lease(self, task: TaskMessage, run: Run, lease_s: float, replays: int) -> None:
        """Tell the tracker the child answers for the run's task for `lease_s` (renewed by
        heartbeats); confirmed, since the delivery is acked next. Raises BusError."""
        await self._publish(
            self._about(task, "lease", new_event_id(), run.attempt, run_id=run.run_id,
                        lease_s=lease_s, task=task, replays=replays)
        )  # fmt: skip

    async def expired(self, task: TaskMessage, attempt: int | None, reason: str) -> None:
        """Tell the tracker the task ends `expired` (never started again); confirmed, since the
        delivery is acked next. Raises BusError."""
        event_id = expired_event_id(task.task_id)
        await self._publish(self._about(task, "expired", event_id, attempt, error=reason))

    async def asked(
        self, task: TaskMessage, attempt: int, question: str, to: str, *, firmly: bool
    ) -> None:
        """Tell the tracker the handler asked `to` a question: the task waits for the answer
        (`input_required`), which sends it back to its pool. Confirmed, since the delivery is
        acked next; `firmly` (the run held a lease, its delivery is acked already): tried for a
        while, since the lease would otherwise expire and run the task again. Raises BusError.
        """
        round_ = len(task.inputs or ()) + 1
        event = self._about(
            task, "input_required", question_event_id(task.task_id, round_), attempt,
            from_=task.to, to=to, round=round_, question=question, task=task,
        )  # fmt: skip
        if not firmly:
            await self._publish(event)
            return
        what = f"question of leased task {task.task_id} not published"
        await retry(lambda _: self._publish(event), BusError, _FIRMLY, log=log, what=what,
                    attempts=_FIRM_ATTEMPTS)  # fmt: skip

    def reports(self, task: TaskMessage, run: Run, every: float) -> RunReports:
        """The run's progress reports and heartbeats, published from now until `close`."""
        return RunReports(self, task, run, every)

    async def retried(
        self, task: TaskMessage, attempt: int, error: str, next_at: datetime, *, firmly: bool
    ) -> None:
        """Tell the tracker attempt `attempt` failed and the next is due at `next_at`.

        `firmly` (the run held a lease): the event ends the lease, which would otherwise expire
        and send the task a second time; it is tried until confirmed, for a while.
        """
        event = self._about(
            task, "retry", new_event_id(), attempt, error=error[:10_000], next_at=next_at
        )
        if not firmly:
            await self._softly(event)
            return
        what = f"retry of leased task {task.task_id} not published"
        try:
            await retry(lambda _: self._publish(event), BusError, _FIRMLY, log=log, what=what,
                        attempts=_FIRM_ATTEMPTS)  # fmt: skip
        except BusError as exc:
            log.error("%s (%s): its lease will expire and send it again", what, exc)

    async def progress(
        self,
        task: TaskMessage,
        run: Run,
        progress: float | None,
        note: str | None,
        lease_s: float | None,
    ) -> None:
        """A run's progress report, or its lease's heartbeat (`lease_s`); best effort."""
        event = self._about(
            task, "progress", new_event_id(), run.attempt, progress=progress, note=note,
            lease_s=lease_s,
        )  # fmt: skip
        await self._softly(event)

    def _about(
        self,
        task: TaskMessage,
        name: EventName,
        event_id: str,
        attempt: int | None,
        /,
        ts: datetime | None = None,
        **fields: Any,
    ) -> Event:
        """An event of this child about a run of `task` (now, unless `ts` says); `fields` are
        the event's own (a lease's `task` among them: hence positional-only above)."""
        return Event(
            event_id=event_id,
            event=name,
            ts=ts or utcnow(),
            task_id=task.task_id,
            conversation_id=task.conversation_id,
            child_id=self.child_id,
            attempt=attempt,
            **fields,
        )

    async def _softly(self, event: Event) -> None:
        """Publish an event whose loss costs only detail in the log."""
        try:
            await self._publish(event)
        except BusError as exc:
            log.warning("could not publish %s for %s: %s", event.event, event.task_id, exc)

    async def _publish(self, event: Event) -> None:
        await amqp.publish(
            self.declared.events,
            self.topo.event_routing_key(event.event),
            event,
            event.event_id,
            timeout=self.timeout,
            message_type="event",
        )


#: A leased run's `retry` event: tried this many times, a second apart at first.
_FIRM_ATTEMPTS = 5
_FIRMLY = Backoff(first=1.0, factor=2.0, cap=10.0)


class RunReports:
    """A run's `progress` events: what the handler reports (`services.child.progress`), at most
    one event per `every` seconds (the latest report), and, once the run holds a lease, a
    heartbeat every quarter of the lease whether or not anything changed.

    `report` may be called from the handler's thread as well as from the loop.
    """

    def __init__(self, events: RunEvents, task: TaskMessage, run: Run, every: float) -> None:
        self.events = events
        self.task = task
        self.run = run
        self.every = every
        self.lease_s: float | None = None
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._progress: float | None = None
        self._note: str | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False

    def report(self, progress: float | None, note: str | None) -> None:
        """Take the handler's latest progress; returns at once."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # a handler's thread
            here = False
        if here:
            self._take(progress, note)
        else:
            self._loop.call_soon_threadsafe(self._take, progress, note)

    def _take(self, progress: float | None, note: str | None) -> None:
        if self._closed:  # an abandoned sync handler still reporting: its run is over
            return
        if progress is not None:
            self._progress = progress
        if note is not None:
            self._note = note
        self._changed.set()
        self._start()

    def lease(self, lease_s: float) -> None:
        """The run holds a lease from now: heartbeats renew it, the first at once (a publisher
        already waiting for a report wakes up and waits a quarter of the lease at most)."""
        self.lease_s = lease_s
        self._changed.set()
        self._start()

    def _start(self) -> None:
        if self._publisher is None and not self._closed:
            self._publisher = asyncio.create_task(self._publish_reports())

    async def _publish_reports(self) -> None:
        while True:
            if self.lease_s is None:
                await self._changed.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lease_s / 4):
                        await self._changed.wait()
            self._changed.clear()
            await self.events.progress(
                self.task, self.run, self._progress, self._note, self.lease_s
            )
            # A chatty handler's reports wait, the latest wins; a heartbeat does not wait longer
            # than a quarter of the lease.
            pause = self.every if self.lease_s is None else min(self.every, self.lease_s / 4)
            await asyncio.sleep(pause)

    async def close(self) -> None:
        """The run ended: no more reports (its outcome follows)."""
        self._closed = True
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.wait({self._publisher})
