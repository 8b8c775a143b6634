"""The tracker's periodic prune: every RELAY_PRUNE_EVERY, what finished RELAY_PRUNE_AFTER ago."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import exclusive
from shared.errors import DatabaseUnavailable
from shared.ids import utcnow
from shared.retention import PruneCounts, prune
from shared.settings import TrackerSettings

log = logging.getLogger(__name__)

#: Held while a tracker prunes: with two trackers on one database, one prunes at a time (the
#: other skips its turn).
PRUNE_LOCK = "convbus:prune"


async def prune_periodically(engine: AsyncEngine, settings: TrackerSettings) -> None:
    """Prune now, then every `prune_every`, until cancelled; a failed prune waits for the next."""
    age = settings.prune_after
    if age is None:
        return
    log.info("pruning what finished %s ago, every %s", age, settings.prune_every)
    while True:
        try:
            async with exclusive(engine, PRUNE_LOCK) as mine:
                counts = await prune(engine, utcnow() - age) if mine else PruneCounts()
        except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
            log.warning("prune failed, trying again in %s: %s", settings.prune_every, exc)
        except Exception:
            # A bug in pruning must not stop the tracker from recording events.
            log.exception("prune failed unexpectedly; trying again in %s", settings.prune_every)
        else:
            if counts.total:
                log.info("pruned %s", counts)
        await asyncio.sleep(settings.prune_every.total_seconds())


@contextlib.asynccontextmanager
async def pruning(engine: AsyncEngine, settings: TrackerSettings) -> AsyncIterator[None]:
    """Prune in the background while the block runs, if RELAY_PRUNE_AFTER is set."""
    if settings.prune_after is None:
        yield
        return
    task = asyncio.create_task(prune_periodically(engine, settings), name="prune")
    try:
        yield
    finally:
        task.cancel()
        # wait(), not await: it neither raises the task's cancellation nor swallows ours.
        await asyncio.wait({task})
