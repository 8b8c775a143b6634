"""Database engines for SQLite (default) and PostgreSQL: async for the services, sync for
migrations (shared/migrate.py)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine, NullPool, create_engine, event, text
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
            _with_idle_limit(full), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    return engine


#: PostgreSQL ends a session left idle inside a transaction this long (milliseconds). A tracker
#: paused or hung mid-batch would otherwise hold its batch lock (services/tracker/store.py) and
#: stop the standby that took its queue over for as long as it hangs; the bus's own transactions
#: never wait on their client for more than moments.
IDLE_IN_TRANSACTION_MS = 10_000


def _with_idle_limit(url: str) -> str:
    """The URL with IDLE_IN_TRANSACTION_MS added to its `options` (kept: a search_path, say)."""
    parsed = make_url(url)
    given = parsed.query.get("options", "")
    limit = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    options = f"{given} {limit}".strip() if isinstance(given, str) else limit
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


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


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key of `name` (a signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def lock_for_transaction(conn: AsyncConnection, name: str) -> None:
    """Wait for the lock `name` (PostgreSQL: until the transaction ends; SQLite: nothing to do,
    a transaction that writes first holds the database's one write lock already)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


@contextlib.asynccontextmanager
async def exclusive(engine: AsyncEngine, name: str) -> AsyncIterator[bool]:
    """Whether this process may do the job `name` now: True unless another holds its lock (on
    PostgreSQL, a session lock on a connection held while the block runs; a process that dies
    lets it go with its connection). SQLite has one writer: always True."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    async with engine.connect() as conn:
        taken = await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
        held = bool(taken.scalar_one())
        await conn.commit()
        try:
            yield held
        finally:
            if held:  # a connection lost has let the lock go with it
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    await conn.commit()
