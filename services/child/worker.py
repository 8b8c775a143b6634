"""The worker: consume a pool's queue, run the handler, call back, and ack in one place."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import ValidationError

from services.child.callback import CallbackClient
from services.child.handlers import Registry
from shared import amqp
from shared.errors import (
    BrokerUnavailable,
    BusError,
    CallbackFailed,
    CallbackRefused,
    UnknownTask,
)
from shared.ids import new_event_id, utcnow
from shared.schemas import CallbackRequest, Event, TaskMessage
from shared.settings import ChildSettings
from shared.topology import Declared, Topology, declare_core, declare_pool

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What becomes of a delivery."""

    ACK = "ack"  # done: the callback succeeded
    PARK = "park"  # poison or unknown: set aside in the pool's parked queue
    REQUEUE = "requeue"  # not done: back to the queue for another try


def attempt_of(message: AbstractIncomingMessage) -> int:
    """The attempt number the message carries (1 when the header is missing or bad)."""
    value = (message.headers or {}).get(amqp.ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) and value >= 1 else 1


class Worker:
    """Serves one pool until `stop` is set."""

    def __init__(
        self,
        settings: ChildSettings,
        pool: str,
        registry: Registry,
        callback: CallbackClient | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.registry = registry
        self.topo = Topology(settings.namespace)
        self.topo.pool_queue(pool)  # validates the name before anything connects
        self.child_id = settings.worker_name
        self.callback = callback or CallbackClient(
            settings.api_base,
            settings.effective_api_key(),
            attempts=settings.callback_attempts,
            backoff=settings.callback_backoff,
            timeout=settings.callback_timeout,
        )
        self.stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._declared: Declared | None = None
        self.done = 0

    async def run(self) -> None:
        try:
            connection = await amqp.connect_with_retry(
                self.settings, f"convbus-child-{self.pool}-{self.child_id}", self.stop
            )
        except BrokerUnavailable:
            if self.stop.is_set():
                return
            raise
        try:
            await self._serve(connection)
        finally:
            await connection.close()
            await self.callback.close()
            log.info("child %s stopped after %d tasks", self.child_id, self.done)

    async def _serve(self, connection: AbstractRobustConnection) -> None:
        publisher = await amqp.open_publisher_channel(connection)
        self._declared = await declare_core(publisher, self.topo)
        consumer: AbstractChannel = await connection.channel()
        await consumer.set_qos(prefetch_count=self.settings.prefetch)
        queue = await declare_pool(
            consumer, self.topo, await declare_core(consumer, self.topo), self.pool
        )
        tag = await queue.consume(self._on_message)
        log.info(
            "child %s consuming %s (prefetch %d)", self.child_id, queue.name, self.settings.prefetch
        )
        await self.stop.wait()
        await queue.cancel(tag)  # no new deliveries; unacked ones return to the queue on close
        if self._in_flight:
            log.info(
                "waiting up to %.0f s for %d tasks",
                self.settings.shutdown_grace,
                len(self._in_flight),
            )
            _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            try:
                verdict = await self._verdict(message)
            except Exception:  # CancelledError is not an Exception: it passes
                log.exception("task %s not done; it goes back to the queue", message.message_id)
                verdict = Verdict.REQUEUE
            await self._settle(message, verdict)
        finally:
            self._in_flight.discard(task)

    async def _verdict(self, message: AbstractIncomingMessage) -> Verdict:
        """Run the task and say what becomes of its delivery; lets CancelledError through."""
        try:
            task = TaskMessage.model_validate_json(message.body)
        except ValidationError as exc:
            log.error(
                "parking a message on %s that is not a valid task (message_id=%s): %s",
                self.pool,
                message.message_id,
                exc.errors(include_input=False)[:3],
            )
            return Verdict.PARK
        attempt = attempt_of(message)
        processing = asyncio.create_task(self._publish_processing(task, attempt))
        outcome = await self._run_handler(task)
        try:
            try:
                await self.callback.send(outcome)
            except CallbackRefused as exc:
                log.error(
                    "the API refused the result of %s (%s); reporting failure", task.task_id, exc
                )
                await self.callback.send(_failed(task, self.child_id, f"result refused: {exc}"))
        except UnknownTask as exc:
            log.error("parking task %s: %s", task.task_id, exc)
            return Verdict.PARK
        except CallbackFailed as exc:
            log.error("%s; the task goes back to the queue", exc)
            return Verdict.REQUEUE
        finally:
            await processing
        self.done += 1
        return Verdict.ACK

    async def _run_handler(self, task: TaskMessage) -> CallbackRequest:
        try:
            result = await self.registry.run(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("handler for %s (cmd %r) raised %r", task.task_id, task.cmd, exc)
            return _failed(task, self.child_id, f"{exc.__class__.__name__}: {exc}")
        try:
            done = CallbackRequest(
                task_id=task.task_id, child_id=self.child_id, status="done", result=result
            )
            done.model_dump_json()
        except ValueError as exc:  # pydantic's validation and serialization errors
            return _failed(
                task, self.child_id, f"handler result refused: not JSON the bus can store: {exc}"
            )
        return done

    async def _publish_processing(self, task: TaskMessage, attempt: int) -> None:
        """Tell the tracker the task started; best effort (the completion is what counts)."""
        assert self._declared is not None
        event = Event(
            event_id=new_event_id(),
            event="processing",
            ts=utcnow(),
            task_id=task.task_id,
            conversation_id=task.conversation_id,
            child_id=self.child_id,
            attempt=attempt,
        )
        try:
            await amqp.publish(
                self._declared.events,
                self.topo.event_routing_key("processing"),
                event,
                event.event_id,
                timeout=10.0,
                message_type="event",
            )
        except BusError as exc:
            log.warning("could not publish processing for %s: %s", task.task_id, exc)

    async def _settle(self, message: AbstractIncomingMessage, verdict: Verdict) -> None:
        """The one place a delivery is acked, parked or requeued; a failed ack is logged."""
        try:
            if verdict is Verdict.ACK:
                await message.ack()
            elif verdict is Verdict.PARK:
                await message.reject(requeue=False)
            else:
                await message.nack(requeue=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "could not %s message %s (%r): RabbitMQ will deliver it again",
                verdict.value,
                message.message_id,
                exc,
            )


def _failed(task: TaskMessage, child_id: str, error: str) -> CallbackRequest:
    return CallbackRequest(
        task_id=task.task_id, child_id=child_id, status="failed", error=error[:10_000]
    )
