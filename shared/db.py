"""Database engines for SQLite (default) and PostgreSQL: async for the services, sync for
migrations (shared/migrate.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine, NullPool, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.errors import ConfigError, DatabaseUnavailable

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except ArgumentError as exc:
        raise ConfigError(f"RELAY_DATABASE_URL: not a database URL ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ConfigError(
            f"RELAY_DATABASE_URL: unsupported database {backend!r} (sqlite, postgresql)"
        )
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def async_url(url: str) -> str:
    """The URL with the async driver the bus uses for its backend."""
    return _with_driver(url, _ASYNC_DRIVERS)


def sync_url(url: str) -> str:
    """The URL with the blocking driver migrations use for its backend."""
    return _with_driver(url, _SYNC_DRIVERS)


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


def migration_engine(url: str) -> Engine:
    """A blocking engine for schema migrations: no pool; on SQLite every transaction is
    ``BEGIN EXCLUSIVE``, so DDL is transactional and concurrent migrations wait their turn."""
    engine = create_engine(sync_url(url), poolclass=NullPool)
    if engine.dialect.name == "sqlite":

        def on_connect(dbapi_conn: Any, record: Any) -> None:
            # The driver's own implicit BEGIN skips DDL; we emit ours (SQLAlchemy's recipe).
            dbapi_conn.isolation_level = None
            _sqlite_pragmas(dbapi_conn, record)

        def on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
    return engine


@contextlib.asynccontextmanager
async def connection(engine: AsyncEngine, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection (`write`: in a transaction, committed at the end); the driver's failures
    come out as DatabaseUnavailable."""
    try:
        async with engine.begin() if write else engine.connect() as conn:
            yield conn
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(f"database error: {exc.__class__.__name__}") from exc
