"""Handlers the end-to-end tests load into `convbus child --handlers bus_handlers:handlers`."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from services.child import InputRequired, NeverRetry, Registry, RetryLater, progress
from shared.schemas import TaskMessage

handlers = Registry()


@handlers.handler("boom")
async def boom(task: TaskMessage) -> None:
    raise RuntimeError(f"boom: {(task.payload or {}).get('why', 'no reason')}")


@handlers.handler("nap")
async def nap(task: TaskMessage) -> dict[str, Any]:
    await asyncio.sleep(float((task.payload or {}).get("seconds", 0.05)))
    return {"napped": True}


@handlers.handler("sync_add")
def sync_add(task: TaskMessage) -> dict[str, Any]:
    payload = task.payload or {}
    time.sleep(0.001)  # a blocking handler runs in a thread, off the event loop
    return {"sum": int(payload.get("a", 0)) + int(payload.get("b", 0))}


@handlers.handler("not_json")
async def not_json(task: TaskMessage) -> object:
    return {"when": object()}  # not JSON


@handlers.handler("nul")
async def nul(task: TaskMessage) -> dict[str, str]:
    return {"text": "a\x00b"}  # the API refuses NUL characters


def _count(payload: dict[str, Any]) -> int:
    """Add one to the counter file the payload names; the count before."""
    path = Path(str(payload["counter"]))
    before = int(path.read_text()) if path.exists() else 0
    path.write_text(str(before + 1))
    return before


@handlers.handler("flaky")
async def flaky(task: TaskMessage) -> dict[str, Any]:
    """Fails its first `fail_times` runs, then succeeds; counts every run in a file."""
    payload = task.payload or {}
    runs_before = _count(payload)
    if runs_before < int(payload.get("fail_times", 0)):
        raise RuntimeError(f"flaky failure {runs_before + 1}")
    return {"runs_before": runs_before}


@handlers.handler("later")
async def later(task: TaskMessage) -> dict[str, Any]:
    payload = task.payload or {}
    if _count(payload) == 0:
        raise RetryLater("not ready yet", delay=float(payload.get("delay", 0.3)))
    return {"ready": True}


@handlers.handler("never")
async def never(task: TaskMessage) -> None:
    _count(task.payload or {})
    raise NeverRetry("the chart is unreadable")


@handlers.handler("crash")
def crash(task: TaskMessage) -> None:
    """Kills the worker that runs it, as a segfaulting library would."""
    os._exit(3)


# Handlers that finish only once `parties` of them run at once in this child (per `group`):
# proof that the child runs that many together. After `within` seconds they give up (failed).
_gathered: dict[str, int] = {}
_all_there: dict[str, asyncio.Event] = {}
_barriers: dict[str, threading.Barrier] = {}
_barriers_lock = threading.Lock()


@handlers.handler("together")
async def together(task: TaskMessage) -> dict[str, Any]:
    payload = task.payload or {}
    group, parties = str(payload["group"]), int(payload["parties"])
    _gathered[group] = _gathered.get(group, 0) + 1
    event = _all_there.setdefault(group, asyncio.Event())
    if _gathered[group] >= parties:
        event.set()
    try:
        await asyncio.wait_for(event.wait(), float(payload.get("within", 30)))
    except TimeoutError:
        raise NeverRetry(f"only {_gathered[group]} of {parties} ran at once") from None
    return {"together": parties}


@handlers.handler("together_sync")
def together_sync(task: TaskMessage) -> dict[str, Any]:
    payload = task.payload or {}
    group, parties = str(payload["group"]), int(payload["parties"])
    with _barriers_lock:
        barrier = _barriers.setdefault(
            group, threading.Barrier(parties, timeout=float(payload.get("within", 30)))
        )
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        raise NeverRetry(f"fewer than {parties} ran at once") from None
    return {"together": parties}


_running: set[str] = set()


@handlers.handler("count_running")
async def count_running(task: TaskMessage) -> dict[str, Any]:
    """Naps; says how many of these ran at once in this child at most while it ran."""
    _running.add(task.task_id)
    peak = len(_running)
    try:
        for _ in range(10):
            await asyncio.sleep(float((task.payload or {}).get("seconds", 0.3)) / 10)
            peak = max(peak, len(_running))
    finally:
        _running.discard(task.task_id)
    return {"peak": peak}


@handlers.handler("block_on")
def block_on(task: TaskMessage) -> dict[str, Any]:
    """Blocks its thread for `seconds` on the child named `child`, not on others."""
    payload = task.payload or {}
    if os.environ.get("RELAY_CHILD_ID") == payload.get("child"):
        time.sleep(float(payload.get("seconds", 120)))
    return {"ran_on": os.environ.get("RELAY_CHILD_ID")}


@handlers.handler("counted_nap")
async def counted_nap(task: TaskMessage) -> dict[str, Any]:
    """Counts its runs in a file, then naps."""
    payload = task.payload or {}
    runs_before = _count(payload)
    await asyncio.sleep(float(payload.get("seconds", 3)))
    return {"runs_before": runs_before}


@handlers.handler("sleepy")
async def sleepy(task: TaskMessage) -> dict[str, Any]:
    """Sleeps `seconds`; writes `cancelled` to the file `mark` if cancelled meanwhile."""
    payload = task.payload or {}
    try:
        await asyncio.sleep(float(payload.get("seconds", 30)))
    except asyncio.CancelledError:
        _mark(payload, "cancelled")
        raise
    return {"slept": True}


@handlers.handler("sleepy_sync")
def sleepy_sync(task: TaskMessage) -> dict[str, Any]:
    """Sleeps `seconds` in its thread, then writes `finished` to the file `mark`."""
    payload = task.payload or {}
    time.sleep(float(payload.get("seconds", 3)))
    _mark(payload, "finished")
    return {"slept": True}


def _mark(payload: dict[str, Any], text: str) -> None:
    if "mark" in payload:
        Path(payload["mark"]).write_text(text)


@handlers.handler("slow_by_default", timeout_s=0.3)
async def slow_by_default(task: TaskMessage) -> dict[str, Any]:
    """Its command's timeout is 0.3 s; it sleeps `seconds`."""
    await asyncio.sleep(float((task.payload or {}).get("seconds", 1)))
    return {"slept": True}


def _report_steps(task: TaskMessage) -> int:
    steps = int((task.payload or {}).get("steps", 1000))
    for step in range(1, steps + 1):
        progress(step / steps, f"step {step} of {steps}")
    return steps


@handlers.handler("reports")
async def reports(task: TaskMessage) -> dict[str, Any]:
    """Reports `steps` progresses at once, then waits long enough for the last to be sent."""
    steps = _report_steps(task)
    await asyncio.sleep(float((task.payload or {}).get("then", 1.5)))
    return {"steps": steps}


@handlers.handler("reports_sync")
def reports_sync(task: TaskMessage) -> dict[str, Any]:
    """`reports`, from a handler's thread."""
    steps = _report_steps(task)
    time.sleep(float((task.payload or {}).get("then", 1.5)))
    return {"steps": steps}


@handlers.handler("ask")
async def ask(task: TaskMessage) -> dict[str, Any]:
    """Asks its payload's `questions` one at a time (of `to`, else its sender), counting its
    runs in `counter` if given; then answers with the answers."""
    payload = task.payload or {}
    if "counter" in payload:
        _count(payload)
    questions = payload.get("questions", ["which one?"])
    asked = len(task.inputs or ())
    if asked < len(questions):
        raise InputRequired(questions[asked], to=payload.get("to"))
    return {"answers": task.answers, "asked": [i.to for i in task.inputs or ()]}
