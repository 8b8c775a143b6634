"""What a child tells the tracker about a run besides its outcome: `processing` (a slow run, or
one that ends in a retry or a parking) and `retry`, published best effort.

The outcome travels in the callback, which names its run: the tracker derives the run's
`processing` entry from it, under the same id as the child's own event, so the log keeps one.
Losing one of these events costs only detail in the log, never the task.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import amqp
from shared.errors import BusError
from shared.ids import new_event_id, new_run_id, processing_event_id, utcnow
from shared.schemas import CallbackRequest, Event, TaskMessage
from shared.topology import Declared, Topology

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run of a handler: what its `processing` entry says, and whether it was published."""

    attempt: int
    run_id: str = field(default_factory=new_run_id)
    started_at: datetime = field(default_factory=utcnow)
    processing_published: bool = False

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
        await self._softly(
            Event(
                event_id=processing_event_id(task.task_id, run_id),
                event="processing",
                ts=started_at,
                task_id=task.task_id,
                conversation_id=task.conversation_id,
                child_id=self.child_id,
                attempt=attempt,
            )
        )

    async def retried(self, task: TaskMessage, attempt: int, error: str, next_at: datetime) -> None:
        """Tell the tracker attempt `attempt` failed and the next is due at `next_at`."""
        await self._softly(
            Event(
                event_id=new_event_id(),
                event="retry",
                ts=utcnow(),
                task_id=task.task_id,
                conversation_id=task.conversation_id,
                child_id=self.child_id,
                attempt=attempt,
                error=error[:10_000],
                next_at=next_at,
            )
        )

    async def _softly(self, event: Event) -> None:
        """Publish an event whose loss costs only detail in the log."""
        try:
            await amqp.publish(
                self.declared.events,
                self.topo.event_routing_key(event.event),
                event,
                event.event_id,
                timeout=self.timeout,
                message_type="event",
            )
        except BusError as exc:
            log.warning("could not publish %s for %s: %s", event.event, event.task_id, exc)
