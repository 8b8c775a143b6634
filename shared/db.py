"""Database engines for SQLite (default) and PostgreSQL, and the schema."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from shared import models  # noqa: F401  (registers the tables)
from shared.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


def async_url(url: str) -> str:
    """The URL with the async driver the bus uses for its backend."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    backend = parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ConfigError(
            f"RELAY_DATABASE_URL: unsupported database {backend!r} (sqlite, postgresql)"
        )
    return parsed.set(drivername=_ASYNC_DRIVERS[backend]).render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the tracker writes; busy_timeout waits out the writer's lock.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout."""
    full = async_url(url)
    if full.startswith("sqlite"):
        engine = create_async_engine(full)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        engine = create_async_engine(
            full, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    return engine


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables and indexes that do not exist yet."""
    try:
        async with engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)
    except (OperationalError, DBAPIError) as exc:
        # Two services creating the schema at once: the loser finds it created.
        log.info("schema creation raced (%s); checking again", exc.__class__.__name__)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(SQLModel.metadata.create_all)
        except SQLAlchemyError as again:
            raise DatabaseUnavailable(f"cannot create the schema: {again}") from again
