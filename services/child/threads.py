"""The threads sync handlers run in: as many as the child's concurrency, not the CPU count.

`asyncio.to_thread` would use the loop's default executor, `min(32, cores + 4)` threads: six on
a two-core machine, whatever the concurrency. Most model SDKs have blocking clients, and a
handler blocked on one only waits, so a child runs as many sync handlers at once as async ones.

Threads start when work needs one and end after `idle_seconds` without work, so a burst's
memory is given back. They are daemon threads: a handler still running when the child's
shutdown grace ends is abandoned (its delivery, never acked, returns to the queue) and does not
keep the process alive, which `concurrent.futures` threads would, joined at exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: An idle thread ends after this long without work.
IDLE_SECONDS = 30.0

_Loop = asyncio.AbstractEventLoop
_Work = tuple[_Loop, asyncio.Future[Any], contextvars.Context, Callable[[], Any]]


class HandlerThreads:
    """Runs blocking calls on up to `size` daemon threads; more wait for a free one."""

    def __init__(self, size: int, *, idle_seconds: float = IDLE_SECONDS, name: str = "handler"):
        self.size = size
        self.idle_seconds = idle_seconds
        self.name = name
        self._ready = threading.Condition()
        self._work: deque[_Work] = deque()
        self._threads = 0  # started and not ended
        self._idle = 0  # of those, the ones not running a call (waiting for work)
        self._started = 0  # ever, for the threads' names

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return self._threads

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """`func(*args)` on one of the threads, in the caller's context (its log fields).

        Cancelling the caller abandons the call: the thread finishes it, and its result is
        dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()
        work: _Work = (loop, future, context, lambda: func(*args))
        with self._ready:
            self._work.append(work)
            if self._idle >= len(self._work):
                self._ready.notify()
            elif self._threads < self.size:
                try:
                    self._start_thread()
                except RuntimeError:  # "can't start new thread": a process or pid limit
                    self._work.remove(work)  # never to run after its caller was told no
                    raise
            # else: every thread is busy; the first to finish takes it.
        return await future

    def _start_thread(self) -> None:
        """One more thread (the lock is held); counted once it started."""
        self._started += 1
        thread = threading.Thread(
            target=self._serve, name=f"{self.name}-{self._started}", daemon=True
        )
        thread.start()  # it waits for the lock before it counts itself idle
        self._threads += 1
        self._idle += 1

    def _serve(self) -> None:
        with self._ready:
            while True:
                while not self._work:
                    if not self._ready.wait(self.idle_seconds) and not self._work:
                        self._threads -= 1
                        self._idle -= 1
                        return
                loop, future, context, call = self._work.popleft()
                self._idle -= 1
                self._ready.release()
                try:
                    _call(loop, future, context, call)
                finally:
                    self._ready.acquire()
                    self._idle += 1


def _call(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    context: contextvars.Context,
    call: Callable[[], Any],
) -> None:
    """Run one call and hand its outcome to the loop that asked (dropped if it gave up)."""
    if future.cancelled():  # abandoned while it waited for a thread
        return
    error: BaseException | None = None
    result = None
    try:
        result = context.run(call)
    except BaseException as exc:  # the handler's own error, reported to the caller
        error = exc
        if not isinstance(exc, Exception) or isinstance(exc, StopIteration):
            # SystemExit or StopIteration would end the child's loop or break the future.
            error = RuntimeError(f"the handler raised {exc!r}")
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop is closed: the child stopped without this call's result
        log.debug("a sync handler finished after its child stopped; result dropped")


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
