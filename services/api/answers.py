"""Answers to tasks' questions: the API's own writes. The first answer to a question is
recorded before it is published, whichever API replica takes it; a second one is refused, and
the same answer again (a retry after a lost 200 or a 503) is published again."""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import connection
from shared.models import TaskAnswer

_ANSWERS = TaskAnswer.__table__  # type: ignore[attr-defined]


class Claim(enum.Enum):
    """What recording an answer found."""

    FIRST = "first"  # this is the answer
    AGAIN = "again"  # the same answer from the same party: a retry
    TAKEN = "taken"  # another answer was recorded first


def answer_hash(answer: Any) -> str:
    """A digest of the answer's JSON (its keys sorted: the same answer, however spelt)."""
    return hashlib.sha256(orjson.dumps(answer, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Answers:
    """Records the one answer of each question."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def claim(
        self, task_id: str, round_: int, answered_by: str, answer: Any, now: datetime
    ) -> tuple[Claim, str]:
        """Record the answer to question `round_` unless one is; what was found, and who
        answered. Raises DatabaseUnavailable."""
        digest = answer_hash(answer)
        row = {
            "task_id": task_id, "round": round_, "answered_by": answered_by, "answer": answer,
            "answer_hash": digest, "answered_at": now,
        }  # fmt: skip
        statement = (
            self._insert(_ANSWERS)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["task_id", "round"])
            .returning(_ANSWERS.c.task_id)  # (rowcount is not the rows inserted on every driver)
        )
        async with connection(self.engine, write=True) as conn:
            if (await conn.execute(statement)).first() is not None:
                return Claim.FIRST, answered_by
            query = select(_ANSWERS.c.answered_by, _ANSWERS.c.answer_hash).where(
                _ANSWERS.c.task_id == task_id, _ANSWERS.c.round == round_
            )
            found = (await conn.execute(query)).one()
        same = found.answered_by == answered_by and found.answer_hash == digest
        return (Claim.AGAIN if same else Claim.TAKEN), found.answered_by

    async def is_recorded(
        self, task_id: str, round_: int, answered_by: str | None, answer: Any
    ) -> bool:
        """Whether this answer, from this party (None: any), is the one recorded for question
        `round_`."""
        digest = answer_hash(answer)
        query = select(_ANSWERS.c.answered_by, _ANSWERS.c.answer_hash).where(
            _ANSWERS.c.task_id == task_id, _ANSWERS.c.round == round_
        )
        async with connection(self.engine) as conn:
            found = (await conn.execute(query)).first()
        if found is None or found.answer_hash != digest:
            return False
        return answered_by is None or found.answered_by == answered_by
