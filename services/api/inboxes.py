"""Inbox cursors: the API's own writes. How far each party acknowledged reading its inbox, so
that a client that restarts reads on from there (GET /api/relay/inbox/{name})."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import connection
from shared.models import InboxCursor

_CURSORS = InboxCursor.__table__  # type: ignore[attr-defined]


class InboxCursors:
    """Reads and moves the acknowledged position of each inbox; it only moves forward."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def acked(self, name: str) -> int:
        """The log id up to which `name` acknowledged its inbox (0: nothing yet)."""
        query = select(_CURSORS.c.acked_id).where(_CURSORS.c.name == name)
        async with connection(self.engine) as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def ack(self, name: str, up_to: int, now: datetime) -> int:
        """Acknowledge `name`'s inbox up to the log id `up_to` (an older position changes
        nothing); the position after. Raises DatabaseUnavailable."""
        insert = self._insert(_CURSORS).values(name=name, acked_id=up_to, updated_at=now)
        statement = insert.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "acked_id": func.max(_CURSORS.c.acked_id, insert.excluded.acked_id)
                if self._insert is sqlite.insert
                else func.greatest(_CURSORS.c.acked_id, insert.excluded.acked_id),
                "updated_at": now,
            },
        ).returning(_CURSORS.c.acked_id)
        async with connection(self.engine, write=True) as conn:
            return int((await conn.execute(statement)).scalar_one())
