"""Handlers the end-to-end tests load into `convbus child --handlers bus_handlers:handlers`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.child import Registry
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
