"""Cancels: the API's own writes. A cancel is recorded before it is published, so that a child
that (re)connects reads it here (GET /api/relay/cancels) even if it missed the live event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import connection
from shared.models import Cancel

_CANCELS = Cancel.__table__  # type: ignore[attr-defined]


class Cancels:
    """Records cancels and lists the recent ones."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def record(self, task_id: str, canceled_by: str, now: datetime) -> None:
        """Record a cancel (again: nothing changes). Raises DatabaseUnavailable."""
        statement = (
            self._insert(_CANCELS)
            .values(task_id=task_id, canceled_by=canceled_by, created_at=now)
            .on_conflict_do_nothing(index_elements=["task_id"])
        )
        async with connection(self.engine, write=True) as conn:
            await conn.execute(statement)

    async def since(self, moment: datetime) -> list[str]:
        """The ids of the tasks canceled since `moment`."""
        query = select(_CANCELS.c.task_id).where(_CANCELS.c.created_at >= moment)
        async with connection(self.engine) as conn:
            return list((await conn.execute(query)).scalars())
