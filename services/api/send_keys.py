"""Clients' send keys (a client-chosen task id, an Idempotency-Key): the API's own writes.

The API records a key with the hash of its body before it publishes, and marks it confirmed
once RabbitMQ confirmed: the same body again returns the same task, another body gets 409.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import connection
from shared.models import SendKey

_KEYS = SendKey.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SendKeyRow:
    """A recorded send key: the task it names, the body's hash, whether RabbitMQ confirmed."""

    task_id: str
    body_hash: str
    confirmed: bool
    pool: str | None
    created_at: datetime


class SendKeys:
    """Records, confirms and looks up send keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def find(self, key: str) -> SendKeyRow | None:
        """What a client's send key was first used for, if it ever was."""
        query = select(
            _KEYS.c.task_id, _KEYS.c.body_hash, _KEYS.c.confirmed, _KEYS.c.pool, _KEYS.c.created_at
        ).where(_KEYS.c.key == key)
        async with connection(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return SendKeyRow(row.task_id, row.body_hash, row.confirmed, row.pool, row.created_at)

    async def reserve(
        self, key: str, task_id: str, body_hash: str, now: datetime, pool: str | None = None
    ) -> bool:
        """Record a client's send key; False if it was recorded already."""
        row = {"key": key, "task_id": task_id, "body_hash": body_hash, "confirmed": False,
               "created_at": now, "pool": pool}  # fmt: skip
        stmt = (
            self._insert(_KEYS)
            .values(row)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(_KEYS.c.key)
        )
        async with connection(self.engine, write=True) as conn:
            inserted = (await conn.execute(stmt)).first()
        return inserted is not None

    async def confirm(self, key: str) -> None:
        """Mark the key's task confirmed by RabbitMQ."""
        async with connection(self.engine, write=True) as conn:
            await conn.execute(update(_KEYS).where(_KEYS.c.key == key).values(confirmed=True))
