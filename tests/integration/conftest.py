"""Fixtures of the store, query and retention tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database (SQLite and PostgreSQL), migrated by `database_url`."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()
