"""The benchmark's handlers: work that waits, as a model call or a tool run does.

A child serves them when started with `convbus child --pool child --handlers
cli.bench.handlers:registry` (`make bench` does); `convbus bench --handler-ms MS [--sync]`
sends them:
  bench.wait       awaits `payload.ms` milliseconds (an async model client);
  bench.wait_sync  blocks in time.sleep as long (a blocking SDK client), on the child's
                   handler threads.
Both answer {"waited_ms": MS}, which the bench checks, so a child without these handlers
(whose echo fallback would answer at once) cannot pass for a fast one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.child.handlers import Registry
from shared.errors import NeverRetry
from shared.schemas import TaskMessage

ASYNC_CMD = "bench.wait"
SYNC_CMD = "bench.wait_sync"
#: The longest wait a task may ask for (ten minutes).
MAX_MS = 600_000

registry = Registry()


def task_fields(
    index: int, handler_ms: int | None, sync: bool, cmd: str = "echo"
) -> dict[str, Any]:
    """The `cmd` and `payload` of the benchmark's task number `index`: `cmd` (no wait), or with
    `handler_ms` the handler that waits that long (`sync`: the blocking one)."""
    if handler_ms is None:
        return {"cmd": cmd, "payload": {"n": index}}
    return {"cmd": SYNC_CMD if sync else ASYNC_CMD, "payload": {"n": index, "ms": handler_ms}}


def _wait_ms(task: TaskMessage) -> int:
    ms = (task.payload or {}).get("ms")
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_MS:
        raise NeverRetry(f"payload.ms must be a whole number of milliseconds, 0 to {MAX_MS}")
    return ms


@registry.handler(ASYNC_CMD)
async def wait(task: TaskMessage) -> dict[str, Any]:
    ms = _wait_ms(task)
    await asyncio.sleep(ms / 1000)
    return {"waited_ms": ms}


@registry.handler(SYNC_CMD)
def wait_sync(task: TaskMessage) -> dict[str, Any]:
    ms = _wait_ms(task)
    time.sleep(ms / 1000)
    return {"waited_ms": ms}
