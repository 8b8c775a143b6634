"""The worker: consume a pool, run the handler, call back; ack, retry or park in one place."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import TypeAdapter, ValidationError

from services.child.callback import CallbackClient
from services.child.cancels import CancelFeed
from services.child.handlers import Registry
from services.child.progress import reporting_to
from services.child.run_events import Run, RunEvents, RunReports
from services.child.schedule import STEPS_MS, hop_ms
from services.child.state import FinishedTasks
from services.child.threads import HandlerThreads
from shared import amqp, metrics
from shared.backoff import Backoff, retry
from shared.errors import (
    BrokerUnavailable,
    BusError,
    CallbackFailed,
    CallbackRefused,
    ConfigError,
    InputRequired,
    NeverRetry,
    RetryLater,
    UnknownTask,
)
from shared.ids import new_event_id, utc_iso, utcnow
from shared.logs import task_context
from shared.ops import OpsServer
from shared.retry import RetryPolicy
from shared.schemas import (
    MAX_INPUT_ROUNDS,
    CallbackRequest,
    Name,
    Question,
    TaskMessage,
    deadline_missed,
)
from shared.settings import ChildSettings
from shared.topology import (
    DELAY_QUEUE_IDLE_MS,
    Declared,
    Topology,
    declare_core,
    declare_delay,
    declare_high,
    declare_pool,
)

log = logging.getLogger(__name__)


#: How much later than its time a scheduled task's possible twin runs (Worker._put_off): the
#: twin's run, if there is one, has then begun and is known to the bus.
COPY_HEAD_START_S = 1.0
#: A handler's question and who it asks, as the `input_required` event must carry them.
_ASKED: TypeAdapter[tuple[str, str]] = TypeAdapter(tuple[Question, Name])
#: A lease not published (the broker away) is tried again after this, up to 10 s.
_LEASE_BACKOFF = Backoff(first=1.0, factor=2.0, cap=10.0)


class Verdict(enum.Enum):
    """What becomes of a delivery."""

    ACK = "ack"  # settled: done, or moved on (retry queue, parking lot) by a confirmed publish
    # (a run past its hold acked its delivery already: its lease answers for the task)
    PARK = "park"  # poison: rejected, RabbitMQ dead-letters it into the parking lot
    REQUEUE = "requeue"  # the runtime could not settle it (broker trouble): deliver it again


class _Retry(Exception):
    """The attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        #: The run held a lease, which the retry's event must end (RunEvents.retried).
        self.leased = False


class _Asked(Exception):
    """The handler asked a question (InputRequired): the task waits for the answer."""

    def __init__(self, question: str, to: str) -> None:
        super().__init__(question)
        self.question = question
        self.to = to
        #: The run held a lease: its delivery is acked already.
        self.leased = False


class _Canceled(Exception):
    """The task was cancelled on the bus: not started, or its handler cancelled (raised)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _Expired:
    """The task's deadline passed before its handler started: it never will."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


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
        if not self.topo.is_pool_name(pool):
            raise ConfigError(f"--pool {pool!r}: not a valid pool name")
        self.queue_name = self.topo.pool_queue(pool)
        self.child_id = settings.worker_name
        self.callback = callback or CallbackClient(
            settings.api_base,
            settings.effective_api_key(),
            attempts=settings.callback_attempts,
            backoff=settings.callback_backoff,
            timeout=settings.callback_timeout,
            batch=settings.callback_batch,
        )
        self.finished = FinishedTasks(
            Path(settings.state_dir) / f"convbus-child-{settings.namespace}-{pool}.db",
            settings.state_retention_days * 86_400,
        )
        self.stop = asyncio.Event()
        #: Handlers running at once, async or sync; `threads` runs the sync ones.
        self._handler_slots = asyncio.Semaphore(settings.concurrency)
        #: The slots of high tasks: their own, so a high task never waits for a normal one.
        self._high_slots = asyncio.Semaphore(settings.high_slots)
        self.threads = HandlerThreads(
            settings.concurrency + settings.high_slots, name=f"handler-{pool}"
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Task id → set when its handler's run here ended (see _run_task).
        self._running: dict[str, asyncio.Event] = {}
        #: Task id → the heartbeats of its leased run, until the task is settled.
        self._leases: dict[str, RunReports] = {}
        #: Task id → its handler running here (a cancel cancels it).
        self._handlers: dict[str, asyncio.Future[object]] = {}
        self.cancels = CancelFeed(
            self.topo, self.child_id, self.callback.read_cancels, self._cancel_running
        )
        self._publisher: AbstractChannel | None = None
        self._declared: Declared | None = None
        self._events: RunEvents | None = None
        self._connection: AbstractRobustConnection | None = None
        self._consuming = False
        self.done = 0
        self.ops = OpsServer(settings.ops_host, settings.ops_port, self.readiness)
        self._count = {
            outcome: metrics.TASKS.labels(pool, outcome)
            for outcome in (
                "completed",
                "failed",
                "retried",
                "parked",
                "skipped",
                "requeued",
                "expired",
                "canceled",
                "put_off",
                "asked",
            )
        }
        self._consumed = metrics.TASKS_CONSUMED.labels(pool)
        self._in_flight_gauge = metrics.TASKS_IN_FLIGHT.labels(pool)
        self._handler_seconds = metrics.HANDLER_DURATION.labels(pool)
        self._callback_seconds = metrics.CALLBACK_DURATION.labels(pool)
        self._callback_failures = metrics.CALLBACK_FAILURES.labels(pool)
        self._timeouts = metrics.HANDLER_TIMEOUTS.labels(pool)
        self._leases_taken = metrics.LEASES.labels(pool)
        self._leased_runs = metrics.LEASED_RUNS.labels(pool)

    async def readiness(self) -> dict[str, bool]:
        """Whether the child consumes its pool (the broker is reachable)."""
        connection = self._connection
        return {
            "broker": self._consuming and connection is not None and connection.connected.is_set()
        }

    async def run(self) -> None:
        await self.ops.start()
        try:
            connection = await amqp.connect_with_retry(
                self.settings, f"convbus-child-{self.pool}-{self.child_id}", self.stop
            )
        except BrokerUnavailable:
            await self.ops.close()
            if self.stop.is_set():
                return
            raise
        self._connection = connection
        try:
            await self._serve(connection)
        finally:
            self._consuming = False
            await self.cancels.close()
            await connection.close()
            await self.callback.close()
            await self.ops.close()
            self.finished.close()
            log.info("child %s stopped after %d tasks", self.child_id, self.done)

    async def _serve(self, connection: AbstractRobustConnection) -> None:
        self._publisher = await amqp.open_publisher_channel(connection)
        self._declared = await declare_core(self._publisher, self.topo)
        self._events = RunEvents(
            self._declared,
            self.topo,
            self.child_id,
            timeout=self.settings.callback_timeout,
            processing_after=self.settings.processing_after,
        )
        self.cancels.start(connection)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=self.settings.prefetch)
        queue = await declare_pool(
            consumer, self.topo, await declare_core(consumer, self.topo), self.pool
        )
        # High tasks on a channel of their own: its prefetch is not taken by the pool's backlog.
        urgent = await connection.channel()
        await urgent.set_qos(prefetch_count=self.settings.high_slots)
        high = await declare_high(
            urgent, self.topo, await declare_core(urgent, self.topo), self.pool
        )
        await self._declare_waits()
        keep_waits = asyncio.create_task(self._keep_waits())
        tags = [(high, await high.consume(self._on_message)),
                (queue, await queue.consume(self._on_message))]  # fmt: skip
        self._consuming = True
        log.info(
            "child %s consuming %s (%d handlers at once, prefetch %d) and %s (%d more)",
            self.child_id,
            queue.name,
            self.settings.concurrency,
            self.settings.prefetch,
            high.name,
            self.settings.high_slots,
        )
        await self.stop.wait()
        self._consuming = False
        keep_waits.cancel()
        for consumed, tag in tags:  # no new deliveries; unacked ones return to the queue on close
            await consumed.cancel(tag)
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

    async def _declare_waits(self) -> None:
        """Declare the queues a retry or a scheduled task of the pool waits in, long before
        anything waits there: RabbitMQ 3.10 loses what a delay queue declared a moment before
        it crashed held (docs/reliability.md, "Delayed start")."""
        assert self._publisher is not None
        for delay_ms in sorted({*STEPS_MS, *self.settings.retry.delays_ms(self.pool)}):
            for priority in (None, "high"):
                await declare_delay(self._publisher, self.topo, self.pool, delay_ms, priority)

    async def _keep_waits(self) -> None:
        """Declare them again, twice as often as an unused one would expire."""
        while True:
            await asyncio.sleep(DELAY_QUEUE_IDLE_MS / 2000)
            try:
                async with asyncio.timeout(self.settings.callback_timeout * 4):
                    await self._declare_waits()
            except Exception as exc:  # the broker away, a channel closed: the next round
                # A queue left to expire is no loss: a retry or a hop declares its own again.
                log.warning("delay queues not declared again (%r): next time", exc)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs this in a task of the channel's, which it cancels when the channel
        # closes (a broker restart, a lost connection). The work runs in a task of its own
        # instead: a handler keeps running, its outcome is recorded, and the copy the broker
        # delivers again waits for it (_run_task) rather than running the handler twice.
        # Shutdown cancels these tasks itself, after the grace.
        work = asyncio.ensure_future(self._handle(message))
        self._in_flight.add(work)
        work.add_done_callback(self._in_flight.discard)
        await asyncio.shield(work)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        self._consumed.inc()
        self._in_flight_gauge.inc()
        try:
            try:
                verdict = await self._verdict(message)
            except Exception:  # CancelledError is not an Exception: it passes
                log.exception("task %s not settled; it goes back to the queue", message.message_id)
                verdict = Verdict.REQUEUE
                self._count["requeued"].inc()
            await self._settle(message, verdict)
        finally:
            self._in_flight_gauge.dec()

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
            self._count["parked"].inc()
            return Verdict.PARK
        with task_context(task.task_id, task.conversation_id):
            if task.not_before is not None and (ahead := _ahead(task.not_before)) > 0:
                return await self._put_off(message, task, ahead)
            if _copy_mark(message) == 1:  # due, and a possible twin: the twin goes first
                return await self._put_off(message, task, COPY_HEAD_START_S, mark=2)
            try:
                return await self._run_task(message, task)
            finally:
                await self._end_lease(task)  # however it ended: cancelled mid-run included

    async def _run_task(self, message: AbstractIncomingMessage, task: TaskMessage) -> Verdict:
        attempt = attempt_of(message)
        policy = self.settings.retry.for_task(self.pool, task.cmd)
        outcome = self.finished.get(task.task_id)
        if outcome is None and (original := self._running.get(task.task_id)) is not None:
            # A copy delivered again (the channel closed and reopened) while this child still
            # runs the original: its outcome will do, rather than a second run.
            log.info("task %s delivered again while it runs here; waiting for it", task.task_id)
            await original.wait()
            outcome = self.finished.get(task.task_id)
        # Nothing was ever called back for a task on its first delivery with a fresh outcome.
        copy = _copy_mark(message) is not None
        first = outcome is None and not message.redelivered and attempt == 1 and not copy
        if outcome is None:
            may_have_run = message.redelivered or attempt > 1 or copy
            if (may_have_run or self.cancels.may_be_forgotten(task.created_at)) and (
                await self._answered_for(task, copy=copy)
            ):
                self._count["skipped"].inc()
                return Verdict.ACK
            running = self._running[task.task_id] = asyncio.Event()
            try:
                ran = await self._run_in_a_slot(message, task, attempt, policy)
            finally:
                del self._running[task.task_id]
                running.set()
            if isinstance(ran, _Retry):
                return await self._retry_or_park(message, task, attempt, policy, ran)
            if isinstance(ran, _Expired):
                return await self._expire(task, None, ran.reason)  # no attempt was made
            if isinstance(ran, _Asked):
                return await self._ask(task, attempt, ran)
            if isinstance(ran, _Canceled):
                log.info("task %s canceled%s", task.task_id, ran.how)
                self._count["canceled"].inc()
                return Verdict.ACK
            if ran is None:
                log.info("task %s not started: the child is stopping", task.task_id)
                self._count["requeued"].inc()
                return Verdict.REQUEUE
            outcome = ran
            self.finished.put(outcome)
        started = time.perf_counter()
        try:
            status = await self._call_back(task, outcome, first=first)
        except UnknownTask as exc:
            await self._run_events().processing_of(task, outcome)
            return await self._park(message, task, attempt, str(exc))
        except CallbackFailed as exc:
            self._callback_failures.inc()
            await self._run_events().processing_of(task, outcome)
            again = _Retry(str(exc))
            again.leased = task.task_id in self._leases  # its retry event ends the lease
            return await self._retry_or_park(message, task, attempt, policy, again)
        finally:
            self._callback_seconds.observe(time.perf_counter() - started)
        self.done += 1
        self._count["completed" if status == "done" else "failed"].inc()
        return Verdict.ACK

    async def _ask(self, task: TaskMessage, attempt: int, asked: _Asked) -> Verdict:
        """The handler asked a question: tell the tracker (confirmed), then ack. The task
        waits `input_required`, held by nothing here, until its answer sends it back."""
        try:
            await self._run_events().asked(
                task, attempt, asked.question, asked.to, firmly=asked.leased
            )
        except BusError as exc:
            if asked.leased:
                log.error(
                    "task %s: its question not published (%s): its lease will expire and run "
                    "it again", task.task_id, exc,
                )  # fmt: skip
                return Verdict.ACK
            log.warning("task %s: its question not published (%s); it goes back", task.task_id, exc)
            self._count["requeued"].inc()
            return Verdict.REQUEUE
        log.info("task %s asks %s a question; it waits for the answer", task.task_id, asked.to)
        self._count["asked"].inc()
        return Verdict.ACK

    async def _answered_for(self, task: TaskMessage, *, copy: bool = False) -> bool:
        """Whether a task delivered again is done, or run by another child under a lease; for a
        scheduled task's possible twin (`copy`), also whether the twin runs or ran it."""
        standing = await self.callback.standing(task.task_id)
        if standing == "running" and not copy:
            # Maybe this delivery's own run, cut short: RabbitMQ delivered it again to run it.
            return False
        if standing == "completed":
            log.info("task %s is completed on the bus; not running it again", task.task_id)
        elif standing == "waiting":
            log.info("task %s waits for an answer; its answer sends it again", task.task_id)
        elif standing == "ended":
            log.info("task %s is canceled or expired on the bus; not running it", task.task_id)
        elif standing == "running":
            log.info("task %s runs from its twin's delivery; leaving this copy", task.task_id)
        elif standing == "leased":
            # Its delivery was acked for a lease (the ack did not reach RabbitMQ): the lease's
            # holder runs it, or the tracker sends it again once the lease expires.
            log.info("task %s runs under a lease elsewhere; leaving this copy", task.task_id)
        return standing is not None

    async def _run_in_a_slot(
        self, message: AbstractIncomingMessage, task: TaskMessage, attempt: int, policy: RetryPolicy
    ) -> CallbackRequest | _Retry | _Asked | _Expired | _Canceled | None:
        """Run the handler once one of the concurrency's slots is free: its outcome with the
        run's fields, the retry it asks for, _Expired past the task's deadline or _Canceled
        (not run, or cancelled while it ran), or None when the child began stopping first."""
        slots = self._high_slots if task.priority == "high" else self._handler_slots
        if not await self._take_a_slot(slots):
            return None
        try:
            if not self.cancels.ready.is_set():
                await self.cancels.ready.wait()  # every cancel sent so far, before any start
            if task.task_id in self.cancels.canceled:
                return _Canceled(": not started")
            if task.deadline is not None and utcnow() >= task.deadline:
                return _Expired(deadline_missed(task.deadline))
            events = self._run_events()
            run = Run(attempt)
            pending = events.processing_when_slow(task, run)
            reports = events.reports(task, run, self.settings.progress_every)
            # A timer, not a task per run: most runs end long before it fires.
            hold = asyncio.get_running_loop().call_later(
                self.settings.hold_delivery, self._hold, message, task, run, reports
            )
            ended: _Retry | _Asked | _Canceled | None = None
            try:
                with reporting_to(reports):
                    outcome = await self._run_handler(task, policy)
            except (_Retry, _Asked, _Canceled) as exc:
                ended = exc
            finally:
                if not run.processing_published:  # a publish under way is left to finish
                    pending.cancel()
                leased = await self._end_hold(hold, reports, run)
            # A run that ends in a retry, a question or a cancel has no callback to name it:
            # its `processing` is published now.
            await events.end(pending, task, run, publish=ended is not None)
            if isinstance(ended, _Retry | _Asked):
                ended.leased = leased
            return ended or outcome.model_copy(update=run.fields())
        finally:
            slots.release()

    def _hold(
        self, message: AbstractIncomingMessage, task: TaskMessage, run: Run, reports: RunReports
    ) -> None:
        """Past RELAY_HOLD_DELIVERY, hand the task from its delivery to a lease: publish the
        lease (confirmed), then ack the delivery, then renew the lease with heartbeats.

        RabbitMQ takes back a delivery left unacked past its consumer timeout (it closes the
        channel and delivers the task again, to run a second time); a lease has no such limit.
        Should this child die, the tracker finds the lease expired and sends the task again.
        The hand-over is not cancelled half-way when the handler ends meanwhile (_end_hold
        waits for it): a lease confirmed but not renewed, or an ack sent but not recorded as
        sent (then acked twice, which closes the channel), would each run the task twice.
        """
        run.handover = asyncio.ensure_future(self._hand_over(message, task, run, reports))

    async def _hand_over(
        self, message: AbstractIncomingMessage, task: TaskMessage, run: Run, reports: RunReports
    ) -> None:
        replays = (message.headers or {}).get(amqp.REPLAYS_HEADER, 0)
        lease_s = self.settings.lease
        await retry(
            lambda _: self._run_events().lease(
                task, run, lease_s, replays if isinstance(replays, int) else 0
            ),
            BusError,
            _LEASE_BACKOFF,
            log=log,
            what=f"lease of long-running task {task.task_id} not published",
        )
        run.leased = True  # the tracker answers for the task from here, acked or not
        self._leases_taken.inc()
        self._leased_runs.inc()
        reports.lease(lease_s)
        try:
            await message.ack()
        except Exception as exc:
            log.warning(
                "task %s: could not ack its delivery for the lease (%r); RabbitMQ will deliver "
                "it again, and a child that receives it while the lease lives leaves it",
                task.task_id, exc,
            )  # fmt: skip
            return
        log.info(
            "task %s has run %.0f s: its delivery is acked, a lease of %.0f s renewed every "
            "%.0f s answers for it",
            task.task_id, self.settings.hold_delivery, lease_s, lease_s / 4,
        )  # fmt: skip

    async def _end_hold(self, hold: asyncio.TimerHandle, reports: RunReports, run: Run) -> bool:
        """The handler ended: no lease taken from now. The heartbeats of a lease go on until the
        task is settled (_run_task), since the callback may take a while; whether it is leased."""
        hold.cancel()
        if run.handover is not None:
            await asyncio.wait({run.handover})
        if run.leased:
            self._leases[reports.task.task_id] = reports
        else:
            await reports.close()
        return run.leased

    async def _take_a_slot(self, slots: asyncio.Semaphore) -> bool:
        """Wait for a free handler slot; False (and none taken) once the child is stopping, at
        once, so the deliveries still waiting go back to the queue for other children."""
        if self.stop.is_set():
            return False
        if not slots.locked():
            await slots.acquire()
            return True
        slot = asyncio.ensure_future(slots.acquire())
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({slot, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            slot.cancel()  # no effect once it has the slot
            got = slot.done() and not slot.cancelled()
            if got and self.stop.is_set():  # or cancelled here: the slot is not kept
                slots.release()
                got = False
        return got

    def timeout_of(self, task: TaskMessage) -> float | None:
        """Seconds the task's handler may run: the task's, its command's, or the child's."""
        if task.timeout_s is not None:
            return task.timeout_s
        by_command = self.registry.timeout_of(task.cmd)
        return by_command if by_command is not None else self.settings.handler_timeout

    async def _run_handler(self, task: TaskMessage, policy: RetryPolicy) -> CallbackRequest:
        """The handler's outcome; raises _Retry when another attempt should be made."""
        started = time.perf_counter()
        timeout = self.timeout_of(task)
        try:
            # A sync handler's thread cannot be stopped: it is abandoned, its result unused.
            async with asyncio.timeout(timeout) as limit:
                result = await self._handler_of(task)
        except asyncio.CancelledError:
            if self._canceled_here(task):
                raise _Canceled(": its handler was cancelled") from None
            raise
        except TimeoutError as exc:
            if not limit.expired():  # the handler's own TimeoutError (a client's, say)
                return self._handler_failed(task, policy, exc)
            self._timeouts.inc()
            return self._handler_failed(task, policy, exc, f"timeout after {timeout:g} s")
        except RetryLater as exc:
            raise _Retry(f"RetryLater: {exc}", exc.delay) from exc
        except InputRequired as exc:
            return self._asking(task, exc)
        except NeverRetry as exc:
            return _failed(task, self.child_id, f"NeverRetry: {exc}")
        except Exception as exc:
            return self._handler_failed(task, policy, exc)
        finally:
            self._handler_seconds.observe(time.perf_counter() - started)
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

    def _asking(self, task: TaskMessage, asked: InputRequired) -> CallbackRequest:
        """Raises _Asked for the handler's question; the task fails (for good) when the question
        cannot be asked."""
        to = asked.to if asked.to is not None else task.from_
        try:
            _ASKED.validate_python((asked.question, to))
        except ValidationError as exc:
            why = f"InputRequired refused: {exc.errors(include_input=False)[0]['msg']}"
        else:
            if len(task.inputs or ()) < MAX_INPUT_ROUNDS:
                raise _Asked(asked.question, to)
            why = f"InputRequired: more than {MAX_INPUT_ROUNDS} questions asked"
        return _failed(task, self.child_id, why)

    async def _handler_of(self, task: TaskMessage) -> object:
        """The handler's result; it runs in a task of its own, which a cancel cancels."""
        handler = asyncio.ensure_future(self.registry.run(task, self.threads))
        self._handlers[task.task_id] = handler
        try:
            return await handler
        finally:
            if self._handlers.get(task.task_id) is handler:
                del self._handlers[task.task_id]

    def _cancel_running(self, task_id: str) -> None:
        """A cancel came: the task's handler, if it runs here, gets CancelledError (a sync one
        is abandoned to its thread)."""
        handler = self._handlers.get(task_id)
        if handler is not None and not handler.done():
            log.info("task %s canceled on the bus: cancelling its handler", task_id)
            handler.cancel()

    def _canceled_here(self, task: TaskMessage) -> bool:
        """Whether the CancelledError just caught is a cancel's, not this child's own."""
        current = asyncio.current_task()
        return task.task_id in self.cancels.canceled and (
            current is None or current.cancelling() == 0
        )

    def _handler_failed(
        self, task: TaskMessage, policy: RetryPolicy, exc: Exception, error: str | None = None
    ) -> CallbackRequest:
        """The failed outcome of a handler that raised `exc` (`error`: what to say instead of
        the exception); raises _Retry if the policy retries errors."""
        error = error or f"{exc.__class__.__name__}: {exc}"
        log.warning("handler for %s (cmd %r) failed: %s", task.task_id, task.cmd, error)
        if policy.retry_errors:
            raise _Retry(error) from exc
        return _failed(task, self.child_id, error)

    async def _call_back(self, task: TaskMessage, outcome: CallbackRequest, *, first: bool) -> str:
        """Report the outcome; the status the API accepted (`done` or `failed`)."""
        try:
            await self.callback.send(outcome, first=first)
        except CallbackRefused as exc:
            log.error("the API refused the result of %s (%s); reporting failure", task.task_id, exc)
            # Without the run: an API older than the child refuses those fields (upgrade the
            # API first), and this report must get through.
            await self.callback.send(_failed(task, self.child_id, f"result refused: {exc}"))
            return "failed"
        return outcome.status

    async def _end_lease(self, task: TaskMessage) -> None:
        """The task is settled: its lease's heartbeats, if it has one, stop."""
        reports = self._leases.pop(task.task_id, None)
        if reports is not None:
            self._leased_runs.dec()
            await reports.close()

    async def _retry_or_park(
        self,
        message: AbstractIncomingMessage,
        task: TaskMessage,
        attempt: int,
        policy: RetryPolicy,
        retry: _Retry,
    ) -> Verdict:
        """Send the task to wait in a delay queue, or to the parking lot when out of retries.

        The publish is confirmed before the delivery is acked: a retry never vanishes between
        the pool's queue and the delay queue.
        """
        delay_ms = policy.delay_ms(attempt)
        if delay_ms is None:
            reason = f"retries exhausted after {attempt} attempts: {retry.reason}"
            return await self._park(message, task, attempt, reason)
        if retry.delay is not None:
            delay_ms = max(10, round(retry.delay * 1000))
        if (
            task.deadline is not None
            and utcnow() + timedelta(milliseconds=delay_ms) >= task.deadline
        ):
            reason = (
                f"attempt {attempt} failed ({retry.reason}); the next would start after its "
                f"deadline {utc_iso(task.deadline)}"
            )
            return await self._expire(task, attempt, reason)
        headers = {
            amqp.ATTEMPT_HEADER: attempt + 1,
            amqp.LAST_ERROR_HEADER: retry.reason[:1000],
            amqp.REPLAYS_HEADER: (message.headers or {}).get(amqp.REPLAYS_HEADER, 0),
        }
        await self._publish_to_wait(message, task, delay_ms, headers)
        next_at = utcnow() + timedelta(milliseconds=delay_ms)
        self._count["retried"].inc()
        # The reason may quote the task's data: it is logged at warning level, not here.
        log.info("task %s: attempt %d failed; retry at %s", task.task_id, attempt, next_at)
        # Best effort, like `processing`: the retry itself is already safe in the delay queue,
        # and requeueing the delivery now would run the task twice.
        await self._run_events().retried(task, attempt, retry.reason, next_at, firmly=retry.leased)
        return Verdict.ACK

    async def _put_off(
        self,
        message: AbstractIncomingMessage,
        task: TaskMessage,
        ahead_s: float,
        mark: int | None = None,
    ) -> Verdict:
        """A task whose time has not come waits again in a delay queue (services/child/
        schedule.py): confirmed, then the delivery acked, so that it is never lost between the
        two; it keeps its headers (its attempt, its replays). A task cancelled meanwhile is
        dropped (its `cancel` ended it on the bus already).

        A hop delivered again may have a twin: the first delivery's copy, published before its
        ack was lost. Its copies are marked; once due, a marked copy waits COPY_HEAD_START_S
        more, then runs only if the bus knows of no run (`_answered_for(copy=True)`): the
        twin's run, should it die, is delivered again from its own delivery."""
        if task.task_id in self.cancels.canceled:
            log.info("task %s canceled while scheduled: dropped", task.task_id)
            self._count["canceled"].inc()
            return Verdict.ACK
        headers = dict(message.headers or {})
        if mark is None and message.redelivered and _copy_mark(message) is None:
            mark = 1
        if mark is not None:
            headers[amqp.MAYBE_COPY_HEADER] = mark
        delay_ms = hop_ms(ahead_s)
        await self._publish_to_wait(message, task, delay_ms, headers)
        self._count["put_off"].inc()
        log.debug("task %s scheduled: waits %d ms more", task.task_id, delay_ms)
        return Verdict.ACK

    async def _publish_to_wait(
        self,
        message: AbstractIncomingMessage,
        task: TaskMessage,
        delay_ms: int,
        headers: dict[str, Any],
    ) -> None:
        """Publish the task into the pool's delay queue of `delay_ms` (declared again, so that
        it does not expire), confirmed; it comes back to the pool's queue after that time."""
        assert self._publisher is not None
        with amqp.broker_errors("RabbitMQ did not declare the delay queue in time"):
            async with asyncio.timeout(self.settings.callback_timeout):
                queue = await declare_delay(
                    self._publisher, self.topo, self.pool, delay_ms, task.priority
                )
        await amqp.publish(
            self._publisher.default_exchange,
            queue,
            message.body,
            task.task_id,
            timeout=self.settings.callback_timeout,
            message_type="task",
            headers=headers,
        )

    async def _expire(self, task: TaskMessage, attempt: int | None, reason: str) -> Verdict:
        """End the task `expired`: confirmed, then acked (else it comes back, expired again)."""
        log.info("task %s expired: %s", task.task_id, reason)
        try:
            await self._run_events().expired(task, attempt, reason[:10_000])
        except BusError as exc:
            log.warning("task %s: its expiry not published (%s); it goes back", task.task_id, exc)
            self._count["requeued"].inc()
            return Verdict.REQUEUE
        self._count["expired"].inc()
        return Verdict.ACK

    async def _park(
        self, message: AbstractIncomingMessage, task: TaskMessage, attempt: int, reason: str
    ) -> Verdict:
        """Put the task in the pool's parking lot (the tracker marks it failed), confirmed."""
        assert self._declared is not None
        log.error("parking task %s: %s", task.task_id, reason)
        await amqp.publish(
            self._declared.dead,
            self.topo.parked_queue(self.queue_name),
            message.body,
            task.task_id,
            timeout=self.settings.callback_timeout,
            message_type="task",
            headers={
                amqp.ATTEMPT_HEADER: attempt,
                amqp.DEAD_REASON_HEADER: reason[:1000],
                amqp.PARKED_ID_HEADER: new_event_id(),
                amqp.REPLAYS_HEADER: (message.headers or {}).get(amqp.REPLAYS_HEADER, 0),
            },
        )
        self._count["parked"].inc()
        return Verdict.ACK

    def _run_events(self) -> RunEvents:
        assert self._events is not None, "set before consuming"
        return self._events

    async def _settle(self, message: AbstractIncomingMessage, verdict: Verdict) -> None:
        """The one place a delivery is acked, parked or requeued; a failed ack is logged.

        A delivery acked already was handed to its run's lease (_hold): nothing is left to do.
        """
        if message.processed:
            return
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


def _copy_mark(message: AbstractIncomingMessage) -> int | None:
    """The mark of a scheduled task's possible twin (1: waiting, 2: given its head start)."""
    value = (message.headers or {}).get(amqp.MAYBE_COPY_HEADER)
    return value if isinstance(value, int) and value in (1, 2) else None


def _ahead(moment: datetime) -> float:
    """Seconds until `moment` by this child's clock (0 or less: it has come)."""
    return (moment - utcnow()).total_seconds()


def _failed(task: TaskMessage, child_id: str, error: str) -> CallbackRequest:
    return CallbackRequest(
        task_id=task.task_id, child_id=child_id, status="failed", error=error[:10_000]
    )
