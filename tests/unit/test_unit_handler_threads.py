"""services/child/threads.py: the threads sync handlers run in."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from services.child.threads import HandlerThreads

_field: contextvars.ContextVar[str] = contextvars.ContextVar("field", default="unset")


async def wait_until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 (set by other threads: polled)
            await asyncio.sleep(0.01)


async def test_a_call_runs_off_the_loop_with_the_callers_context() -> None:
    threads = HandlerThreads(2)
    _field.set("task t1")

    def work(a: int, b: int) -> tuple[int, bool, str]:
        return a + b, threading.current_thread() is threading.main_thread(), _field.get()

    assert await threads.run(work, 2, 3) == (5, False, "task t1")


async def test_the_handlers_error_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad chart")

    with pytest.raises(ValueError, match="bad chart"):
        await HandlerThreads(1).run(fail)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), StopIteration()])
async def test_what_would_end_the_loop_arrives_as_a_runtime_error(raised: BaseException) -> None:
    def leave() -> None:
        raise raised

    with pytest.raises(RuntimeError, match="the handler raised"):
        await HandlerThreads(1).run(leave)


async def test_as_many_calls_block_at_once_as_the_size_beyond_the_cpu_count() -> None:
    # Every call waits for all the others: only a pool running 60 at once gets through (the
    # default executor behind asyncio.to_thread runs min(32, cores + 4)).
    size = 60
    barrier = threading.Barrier(size, timeout=10)
    threads = HandlerThreads(size)
    results = await asyncio.gather(*(threads.run(barrier.wait) for _ in range(size)))
    assert sorted(results) == list(range(size))
    assert threads.threads == size


async def test_no_more_than_the_size_run_at_once_and_the_rest_wait() -> None:
    threads = HandlerThreads(3)
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1

    calls = [asyncio.ensure_future(threads.run(work)) for _ in range(7)]
    await wait_until(lambda: running == 3)
    await asyncio.sleep(0.05)  # a fourth thread would have started by now
    assert (peak, threads.threads) == (3, 3)
    assert not any(call.done() for call in calls)
    release.set()
    await asyncio.gather(*calls)
    assert (peak, threads.threads) == (3, 3)


async def test_idle_threads_end_and_new_ones_start_when_work_comes() -> None:
    threads = HandlerThreads(4, idle_seconds=0.05)
    await asyncio.gather(*(threads.run(time.sleep, 0.02) for _ in range(4)))
    await wait_until(lambda: threads.threads == 0)
    assert await threads.run(lambda: "again") == "again"


async def test_a_cancelled_caller_abandons_the_call_and_the_thread_serves_again() -> None:
    threads = HandlerThreads(1)
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "late"

    call = asyncio.ensure_future(threads.run(slow))
    await wait_until(started.is_set)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    assert await threads.run(lambda: "next") == "next"
    assert threads.threads == 1


def test_a_handler_still_running_does_not_keep_the_process_alive() -> None:
    # The child's grace ended with a sync handler still blocked: the process must exit (its
    # delivery returns to the queue), not wait for the handler as executor threads make it.
    script = textwrap.dedent(
        """
        import asyncio, time
        from services.child.threads import HandlerThreads

        async def main():
            call = asyncio.ensure_future(HandlerThreads(1).run(time.sleep, 60))
            await asyncio.sleep(0.1)
            call.cancel()

        asyncio.run(main())
        print("left")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "left"), done.stderr


async def test_a_thread_that_cannot_start_fails_the_call_and_leaves_no_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = HandlerThreads(2)
    ran: list[str] = []

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await threads.run(ran.append, "refused")
    assert threads.threads == 0
    assert await threads.run(ran.append, "next") is None
    await wait_until(lambda: threads._idle == 1)  # the thread is back waiting
    assert ran == ["next"]  # the refused call never ran, late or otherwise
