"""Handlers the end-to-end tests load into `convbus child --handlers bus_handlers:handlers`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from services.child import NeverRetry, Registry, RetryLater
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
