"""Jobs one tracker does at a time (pruning, publishing the outbox), however many run."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import exclusive


async def test_one_holder_at_a_time(engine: AsyncEngine) -> None:
    async with exclusive(engine, "test-job") as first:
        assert first
        async with exclusive(engine, "test-job") as second, exclusive(engine, "other") as other:
            # PostgreSQL: the job is taken, another job is not; SQLite has one process.
            assert second is (engine.dialect.name == "sqlite") and other
    async with exclusive(engine, "test-job") as again:
        assert again  # let go at the end of the block
