"""The tracker's schema, managed by Alembic: upgrade it (`convbus migrate`), or check it is current.

The revisions live in shared/migrations (shipped in the package). A database made by the
services before migrations existed (SQLModel's `create_all`, no `alembic_version` table) is
stamped at the baseline revision by `migrate`, then upgraded like any other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import migration_engine
from shared.errors import ConfigError, DatabaseUnavailable
from shared.ids import utcnow

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The revision that creates what `create_all` made before migrations existed.
BASELINE = "0001"
#: The tables (and their columns) of the baseline, to recognise a database made by create_all.
BASELINE_TABLES = {
    "tasks": {
        "task_id", "sender", "recipient", "type", "cmd", "payload", "text", "conversation_id",
        "state", "attempts", "child_id", "result", "error", "next_attempt_at", "send_seen",
        "created_at", "updated_at", "completed_at",
    },
    "log_entries": {
        "id", "event_id", "event", "ts", "task_id", "conversation_id", "sender", "recipient",
        "data",
    },
    "send_keys": {"key", "task_id", "pool", "body_hash", "confirmed", "created_at"},
}  # fmt: skip
#: Key of the PostgreSQL advisory lock that serialises migrations ("convbus" in ASCII).
PG_LOCK_KEY = 0x636F6E76627573
#: Alembic's `context` and `op` are process-global: one migration at a time per process.
_ALEMBIC = threading.Lock()


def alembic_config() -> Config:
    """Alembic's configuration, without an alembic.ini: the package's migrations folder."""
    # Importing alembic's commands logs a line per autogenerate plugin at INFO: noise here.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The revision this release needs."""
    return ",".join(sorted(_scripts().get_heads()))


def _db_revision(conn: Connection) -> str | None:
    """The revision recorded in the database, if any."""
    # Plain SQL rather than alembic's MigrationContext, which logs at INFO every time.
    if "alembic_version" not in inspect(conn).get_table_names():
        return None
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return ",".join(sorted(rows)) or None


def _baseline_tables(conn: Connection) -> bool:
    """True if the database holds the baseline's tables; ConfigError if only some of them."""
    found = set(inspect(conn).get_table_names())
    present = found & BASELINE_TABLES.keys()
    if not present:
        return False
    if present != BASELINE_TABLES.keys():
        raise ConfigError(
            f"the database has some of the bus's tables ({', '.join(sorted(present))}) but not "
            f"all, and no migration history: not a database convbus made; fix it by hand"
        )
    for table, columns in BASELINE_TABLES.items():
        missing = columns - {c["name"] for c in inspect(conn).get_columns(table)}
        if missing:
            raise ConfigError(
                f"the database's table {table} lacks columns {', '.join(sorted(missing))} and "
                f"has no migration history: not the schema convbus made; fix it by hand"
            )
    return True


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the database's migration lock: one `migrate` at a time, across processes."""
    if conn.dialect.name == "postgresql":
        # Session-level, so it spans the per-revision transactions (and autocommit blocks).
        conn.execute(select(func.pg_advisory_lock(PG_LOCK_KEY)))
        conn.commit()
        try:
            yield
        finally:
            # If this fails the connection is gone, and the lock with its session.
            with suppress(SQLAlchemyError):
                conn.rollback()
                conn.execute(select(func.pg_advisory_unlock(PG_LOCK_KEY)))
                conn.commit()
    else:
        # SQLite: one BEGIN EXCLUSIVE transaction around everything (see migration_engine).
        with conn.begin():
            yield


def _ensure_schema(url: str) -> None:
    """On PostgreSQL, create the schema first on the URL's search_path if it is missing (a
    namespace given a schema of its own: `?options=-csearch_path%3D<schema>`). On an engine of
    its own: SQLAlchemy reads the default schema once, when an engine first connects."""
    engine = migration_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return
        with engine.connect() as conn:
            if conn.execute(text("SELECT current_schema()")).scalar() is not None:
                return
            path = str(conn.execute(text("SHOW search_path")).scalar())
            first = path.split(",", maxsplit=1)[0].strip().strip('"')
            if not first or first == "$user":
                return
            quoted = conn.dialect.identifier_preparer.quote(first)
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            conn.commit()
            log.info("created the schema %s", quoted)
    finally:
        engine.dispose()


def migrate_blocking(url: str) -> str:
    """Upgrade the database at `url` to head; the revision it is left at (blocking)."""
    config = alembic_config()
    from alembic import command

    try:
        _ensure_schema(url)
    except DBAPIError as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {exc.orig}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {exc}") from exc
    engine = migration_engine(url)
    try:
        with _ALEMBIC, engine.connect() as conn, _migration_lock(conn):
            config.attributes["connection"] = conn
            legacy = _db_revision(conn) is None and _baseline_tables(conn)
            if conn.in_transaction() and conn.dialect.name == "postgresql":
                conn.commit()  # alembic runs each revision in a transaction of its own
            if legacy:
                log.info("tables made before migrations: stamping them at %s", BASELINE)
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")
            revision = _db_revision(conn)
    except DBAPIError as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {exc.orig}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {exc}") from exc
    except CommandError as exc:
        raise ConfigError(f"cannot migrate the database: {exc}") from exc
    finally:
        engine.dispose()
    assert revision is not None  # upgrade to head leaves a revision
    return revision


async def migrate(url: str) -> str:
    """Upgrade the database at `url` to head; the revision it is left at.

    Safe to run concurrently: on PostgreSQL an advisory lock, on SQLite the database's write
    lock, lets one migration run at a time; the others then find the database at head.
    """
    return await asyncio.to_thread(migrate_blocking, url)


def _state(conn: Connection) -> tuple[str | None, bool]:
    """The database's revision, and whether it has the bus's tables without one."""
    revision = _db_revision(conn)
    tables = set(inspect(conn).get_table_names())
    return revision, revision is None and bool(tables & BASELINE_TABLES.keys())


async def require_current(engine: AsyncEngine) -> None:
    """Return if the database is at this release's head revision; else ConfigError.

    DatabaseUnavailable if it cannot be reached.
    """
    try:
        async with engine.connect() as conn:
            revision, legacy = await conn.run_sync(_state)
    except (SQLAlchemyError, OSError) as exc:
        reason = exc.__class__.__name__
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            reason = str(exc.orig).splitlines()[0]
        raise DatabaseUnavailable(f"cannot read the schema's revision: {reason}") from exc
    needed = head()
    if revision == needed:
        return
    if legacy:
        where = "has tables made before convbus used migrations (no revision recorded)"
    elif revision is None:
        where = "has no convbus schema"
    elif revision not in _known_revisions():
        raise ConfigError(
            f"the database schema is at revision {revision}, which this release does not know "
            f"(a newer release migrated it?); this release needs {needed}"
        )
    else:
        where = f"schema is at revision {revision}"
    raise ConfigError(f"the database {where}, this release needs {needed}: run `convbus migrate`")


async def claim(engine: AsyncEngine, namespace: str) -> None:
    """Return if the database (on PostgreSQL, the schema first on its search_path) records the
    bus of `namespace`: claimed now if no namespace has claimed it yet. ConfigError if another
    namespace's bus records here (two buses would mix their tasks and logs)."""
    from shared.models import BusOwner

    owner = BusOwner.__table__  # type: ignore[attr-defined]
    try:
        async with engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            claim_row = dialect.insert(owner).on_conflict_do_nothing()
            await conn.execute(claim_row.values(id=1, namespace=namespace, claimed_at=utcnow()))
            found = (await conn.execute(select(owner.c.namespace))).scalar_one()
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(f"cannot read the database's namespace: {exc!r}") from exc
    if found != namespace:
        raise ConfigError(
            f"this database records the bus of namespace {found!r}, not {namespace!r}: give "
            f"each namespace a database of its own, or on PostgreSQL a schema of its own "
            f"(RELAY_DATABASE_URL=postgresql://…/db?options=-csearch_path%3D{namespace}, "
            f"then `convbus migrate`)"
        )


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _scripts().walk_revisions()}
