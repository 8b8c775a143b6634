"""What the tracker commits, as this API replica hears it: waits wake, streams follow.

The tracker publishes a CommitNotice after each commit (services/tracker/notices.py) on a
fanout that every API replica listens to on a queue of its own. A notice names the tasks whose
row changed, so a read waiting for a task (`?wait=`) reads the database again only when its
task changed, however many wait. For streams, one reader per replica fetches the entries after
its cursor, once per notice, and hands each to the streams whose filter it matches.

Notices are transient: after a reconnection, or when a notice's sequence number shows a gap,
every wait reads again and the streams' reader catches up. Log ids grow in commit order (the
trackers write one batch at a time: services/tracker/store.py BATCH_LOCK), so "every entry
after id N" misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from pydantic import ValidationError

from shared import metrics
from shared.backoff import Backoff, retry
from shared.contract import MAX_LIMIT
from shared.errors import BusError, DatabaseUnavailable
from shared.ids import new_run_id
from shared.readmodel import LogFilter, Reader
from shared.schemas import CommitNotice
from shared.topology import Topology, declare_committed

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Entries the streams' reader fetches at once.
_PAGE = MAX_LIMIT
_FOLLOW_BACKOFF = Backoff(first=0.5, factor=2.0, cap=10.0)
_FOLLOW_TIMEOUT = 15.0
_FOLLOW_ERRORS = (BusError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError, OSError)
#: The streams' reader reads the log at least this often while streams are open.
_CATCH_UP_S = 10.0
#: While the database is down, the streams' reader tries again this often.
_DB_RETRY_S = 1.0


def inbox_key(name: str) -> str:
    """What a wait on `name`'s inbox waits for (a task id never holds a `/`)."""
    return f"inbox/{name}"


@dataclass(frozen=True)
class StreamFilter:
    """The filters of GET /stream: those of GET /logs, without `limit`."""

    task_id: str | None = None
    conversation_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    event: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether the entry (a row of Reader.entries_after) passes, as the log query has it:
        a task's entry belongs to its task's conversation."""
        for field, column in (
            (self.task_id, "task_id"),
            (self.sender, "sender"),
            (self.event, "event"),
        ):
            if field is not None and row[column] != field:
                return False
        if self.recipient is not None and self.recipient != row["recipient"]:
            # An outcome is addressed to the task's sender.
            outcome = row["task_outcome_id"] == row["id"]
            if not (outcome and row["task_sender"] == self.recipient):
                return False
        wanted = self.conversation_id
        return wanted is None or wanted in (row["conversation_id"], row["task_conversation_id"])

    def page_after(self, after: int) -> LogFilter:
        return LogFilter(
            limit=_PAGE,
            after=after,
            task_id=self.task_id,
            conversation_id=self.conversation_id,
            sender=self.sender,
            recipient=self.recipient,
            event=self.event,
        )


class _Follower:
    """One open stream's entries in waiting; a client that lets `buffer` pile up is dropped."""

    def __init__(self, where: StreamFilter, buffer: int) -> None:
        self.where = where
        #: Entries in log order; None: dropped.
        self.entries: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=buffer + 1)
        self.buffer = buffer
        #: Set when the client lagged too far: its connection is closed.
        self.dropped = asyncio.Event()

    def offer(self, row: dict[str, Any]) -> None:
        if self.dropped.is_set() or not self.where.matches(row):
            return
        if self.entries.qsize() < self.buffer:
            self.entries.put_nowait(row)
            return
        self.dropped.set()
        metrics.API_STREAMS_DROPPED.inc()
        while not self.entries.empty():
            self.entries.get_nowait()
        self.entries.put_nowait(None)

    def end(self) -> None:
        """The server stops: the stream ends (its client resumes with Last-Event-ID)."""
        self.dropped.set()


class CommitFeed:
    """Hears the tracker's commit notices; wakes waits and feeds streams."""

    def __init__(self, topo: Topology, reader: Reader, stream_buffer: int) -> None:
        self.topo = topo
        self.reader = reader
        self.stream_buffer = stream_buffer
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._followers: set[_Follower] = set()
        #: Set when the server stops: streams end, waits answer at once.
        self._ending = False
        #: Every entry up to this id was handed to the streams (None: no stream is open).
        self._cursor: int | None = None
        self._cursor_lock = asyncio.Lock()
        self._more = asyncio.Event()
        #: The last notice heard: (tracker run, sequence number).
        self._last_notice: tuple[str, int] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._following: asyncio.Task[None] | None = None
        self._reading = asyncio.create_task(self._read_for_streams(), name="stream-reader")

    # --- hearing the notices

    def start(self, connection: AbstractRobustConnection) -> None:
        """Listen for notices on `connection`, again after each reconnection (in the background)."""
        self._connection = connection
        connection.reconnect_callbacks.add(self._reconnected)
        self._follow()

    async def _reconnected(self, *_: Any) -> None:
        self._follow()

    def _follow(self) -> None:
        if self._following is not None:
            self._following.cancel()
        self._following = asyncio.create_task(self._follow_until_done(), name="commit-notices")

    async def _follow_until_done(self) -> None:
        await retry(
            lambda _: self._follow_once(), _FOLLOW_ERRORS, _FOLLOW_BACKOFF, log=log,
            what="commit notices not heard (waits end at their time, streams lag)",
        )  # fmt: skip
        log.info("hearing the tracker's commit notices")

    async def _follow_once(self) -> None:
        """A queue of this replica's own on the fanout (declared anew after each reconnection,
        not left to aio-pika's restore); then everyone reads again what it may have missed."""
        assert self._connection is not None
        old, self._channel = self._channel, None
        if old is not None and not old.is_closed:
            with contextlib.suppress(Exception):
                await old.close()
        async with asyncio.timeout(_FOLLOW_TIMEOUT):
            channel = await self._connection.channel()
            assert isinstance(channel, AbstractRobustChannel)
            try:
                exchange = await declare_committed(channel, self.topo)
                queue = await channel.declare_queue(
                    self.topo.notices_queue(new_run_id()),
                    exclusive=True,
                    auto_delete=True,
                    robust=False,
                )
                await queue.bind(exchange, robust=False)
                await queue.consume(self._on_message, no_ack=True, robust=False)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        self._channel = channel
        self._missed()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            notice = CommitNotice.model_validate_json(message.body)
        except ValidationError:
            log.warning("ignoring a message among the commit notices that is not one")
            return
        last, self._last_notice = self._last_notice, (notice.tracker, notice.seq)
        if last is not None and last != (notice.tracker, notice.seq - 1):
            metrics.API_NOTICES.labels("gap").inc()
            self._missed()
            return
        metrics.API_NOTICES.labels("heard").inc()
        for key in [*notice.task_ids, *map(inbox_key, notice.inboxes)]:
            for changed in self._waiters.get(key, ()):
                changed.set()
        self._more.set()

    def _missed(self) -> None:
        """Notices may have been missed: every wait reads again, the streams catch up."""
        for waiting in self._waiters.values():
            for changed in waiting:
                changed.set()
        self._more.set()

    # --- waits

    async def wait(
        self,
        key: str,
        seconds: float,
        read: Callable[[], Awaitable[T]],
        done: Callable[[T], bool],
    ) -> T:
        """`read()` once it is `done`, or when `seconds` are up; read again only when a notice
        names `key` (a task id, or an inbox's `inbox_key`), or some may have been missed."""
        if seconds <= 0:
            return await read()
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        changed = asyncio.Event()
        # Listening before the first read: a commit between the read and the wait still wakes it.
        self._waiters.setdefault(key, set()).add(changed)
        metrics.API_WAITS.inc()
        try:
            while True:
                changed.clear()
                value = await read()
                left = until - loop.time()
                if done(value) or left <= 0 or self._ending:
                    return value
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()
        finally:
            metrics.API_WAITS.dec()
            waiting = self._waiters[key]
            waiting.discard(changed)
            if not waiting:
                del self._waiters[key]

    # --- streams

    @property
    def streams(self) -> int:
        """Streams open now."""
        return len(self._followers)

    async def subscribe(self, where: StreamFilter, after: int | None) -> Subscription:
        """A stream of the entries passing `where` after the id `after` (None: from now on);
        raises DatabaseUnavailable (before anything is sent) if the log cannot be read."""
        follower = _Follower(where, self.stream_buffer)
        async with self._cursor_lock:
            if self._cursor is None:
                self._cursor = await self.reader.last_log_id()
            # From here on, every entry after the cursor reaches the follower.
            self._followers.add(follower)
            start = self._cursor
        metrics.API_STREAMS.inc()
        return Subscription(self, follower, after, start)

    def _unsubscribe(self, follower: _Follower) -> None:
        if follower in self._followers:
            metrics.API_STREAMS.dec()
            self._followers.discard(follower)
            if not self._followers:
                self._cursor = None

    async def _read_for_streams(self) -> None:
        """One reader of new entries for every stream of this replica, woken by the notices,
        and every _CATCH_UP_S at least (a last notice lost, or notices not heard at all)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CATCH_UP_S):
                    await self._more.wait()
            self._more.clear()
            try:
                await self._hand_out()
            except DatabaseUnavailable as exc:
                log.warning("streams lag: %s; trying again in %g s", exc, _DB_RETRY_S)
                await asyncio.sleep(_DB_RETRY_S)
                self._more.set()
            except Exception:
                log.exception("streams' reader failed; trying again at the next notice")

    async def _hand_out(self) -> None:
        async with self._cursor_lock:
            while self._followers and self._cursor is not None:
                rows = await self.reader.entries_after(self._cursor, _PAGE)
                if self._cursor is None:
                    return  # every stream closed meanwhile
                for row in rows:
                    for follower in list(self._followers):
                        follower.offer(row)
                if rows:
                    self._cursor = rows[-1]["id"]
                if len(rows) < _PAGE:
                    return

    def end_streams(self) -> None:
        """End every open stream now, and answer every wait with what it reads now: the server
        is stopping, and would otherwise wait for them until its graceful-shutdown timeout."""
        self._ending = True
        for follower in list(self._followers):
            follower.end()
        for waiting in self._waiters.values():
            for changed in waiting:
                changed.set()

    async def close(self) -> None:
        for task in (self._following, self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()


class Subscription:
    """One open stream: what was committed after its start, then what is committed next."""

    def __init__(
        self, feed: CommitFeed, follower: _Follower, after: int | None, start: int
    ) -> None:
        self._feed = feed
        self._follower = follower
        self._after = after
        #: The last entry given (or skipped as before the start).
        self._sent = start if after is None else after

    @property
    def dropped(self) -> asyncio.Event:
        """Set once the client lags by more than the stream buffer: close its connection (it
        may be stuck writing to a client that does not read)."""
        return self._follower.dropped

    async def entries(self, keepalive: float) -> AsyncIterator[dict[str, Any] | None]:
        """The entries in log order, each once; None after `keepalive` seconds without one.
        Ends when the client lags by more than the stream buffer."""
        where = self._follower.where
        try:
            if self._after is not None:
                while True:  # what was committed before: from the log, a page at a time
                    rows = await self._feed.reader.logs(where.page_after(self._sent))
                    for row in rows:
                        yield row
                        self._sent = row["id"]
                    if len(rows) < _PAGE:
                        break
            while True:
                try:
                    async with asyncio.timeout(keepalive):
                        entry = await self._follower.entries.get()
                except TimeoutError:
                    yield None
                    continue
                if entry is None:
                    return  # dropped: too slow
                if entry["id"] > self._sent:  # the log's pages may have given it already
                    yield entry
                    self._sent = entry["id"]
        finally:
            self.close()

    def close(self) -> None:
        self._feed._unsubscribe(self._follower)
