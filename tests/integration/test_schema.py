"""Schema migrations on SQLite and PostgreSQL: upgrade, no-op, concurrency, legacy databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

from cli.processes import free_port
from shared import models  # noqa: F401  (the tables compared with)
from shared.db import make_engine, migration_engine
from shared.errors import ConfigError
from shared.migrate import (
    BASELINE,
    PG_LOCK_KEY,
    alembic_config,
    head,
    migrate,
    migrate_blocking,
    require_current,
)
from tests.support.bus import wait_for


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    engine = migration_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def diff_with_models(url: str) -> list[Any]:
    with connected(url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def schema_snapshot(url: str) -> dict[str, Any]:
    with connected(url) as conn:
        db = inspect(conn)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in db.get_columns(table)],
                sorted((i["name"] or "", tuple(i["column_names"])) for i in db.get_indexes(table)),
                sorted(tuple(u["column_names"]) for u in db.get_unique_constraints(table)),
            )
            for table in db.get_table_names()
        }


def version_rows(url: str) -> list[str]:
    with connected(url) as conn:
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def make_legacy(url: str) -> None:
    """A database as the services' `create_all` made it before migrations: the baseline's
    tables, no alembic_version."""
    with connected(url) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.commit()


async def refused_then_migrated(url: str, refusal: str) -> None:
    """The services refuse the database (`refusal`); `migrate` brings it to the models."""
    engine = make_engine(url)
    try:
        with pytest.raises(ConfigError, match=refusal):
            await require_current(engine)
        assert await migrate(url) == head()
        await require_current(engine)
    finally:
        await engine.dispose()
    assert diff_with_models(url) == []


async def test_upgrade_from_empty_matches_the_models(empty_database_url: str) -> None:
    await refused_then_migrated(empty_database_url, r"has no convbus schema.*run `convbus migrate`")
    assert version_rows(empty_database_url) == [head()]


def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    with connected(database_url) as conn:
        conn.execute(
            text(
                "INSERT INTO send_keys (key, task_id, body_hash, confirmed, created_at)"
                " VALUES ('task/a', 'a', 'h', false, CURRENT_TIMESTAMP)"
            )
        )
        conn.commit()
    before = schema_snapshot(database_url)
    assert migrate_blocking(database_url) == head()
    assert schema_snapshot(database_url) == before
    assert version_rows(database_url) == [head()]
    with connected(database_url) as conn:
        assert conn.execute(text("SELECT task_id FROM send_keys")).scalars().all() == ["a"]


def cli(database_url: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))}
    env["RELAY_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_convbus_migrate_prints_the_revision(empty_database_url: str, tmp_path: Path) -> None:
    for _ in range(2):  # the second run finds the database at head
        proc = cli(empty_database_url, tmp_path, "migrate")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == f"database schema at revision {head()}"
    assert diff_with_models(empty_database_url) == []


def test_convbus_migrate_fails_clearly_without_a_database(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    proc = cli(url, tmp_path, "migrate")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert out == ""
    assert "convbus migrate: cannot migrate the database:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
def test_concurrent_migrates_on_postgresql_take_turns(
    empty_database_url: str, tmp_path: Path
) -> None:
    # The test holds the migration lock, so both migrations are waiting for it at once.
    with psycopg.connect(empty_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (PG_LOCK_KEY,))
        procs = [cli(empty_database_url, tmp_path, "migrate") for _ in range(2)]

        def waiting() -> bool:
            row = holder.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted"
                " AND d.datname = current_database()"
            ).fetchone()
            for proc in procs:
                assert proc.poll() is None, proc.communicate()
            return row is not None and row[0] == 2

        wait_for(waiting, timeout=60, what="both migrations to wait for the lock")
        holder.execute("SELECT pg_advisory_unlock(%s)", (PG_LOCK_KEY,))
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == f"database schema at revision {head()}"
    assert version_rows(empty_database_url) == [head()]
    assert diff_with_models(empty_database_url) == []


async def test_a_create_all_database_is_stamped_then_upgraded(empty_database_url: str) -> None:
    make_legacy(empty_database_url)
    with connected(empty_database_url) as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (task_id, type, state, attempts, send_seen, created_at,"
                " updated_at) VALUES ('t1', 'task', 'pending', 0, false, CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP)"
            )
        )
        conn.commit()
    await refused_then_migrated(empty_database_url, r"tables made before convbus used migrations")
    with connected(empty_database_url) as conn:
        assert conn.execute(text("SELECT task_id FROM tasks")).scalars().all() == ["t1"]


def test_a_database_with_only_some_tables_is_refused(empty_database_url: str) -> None:
    make_legacy(empty_database_url)
    with connected(empty_database_url) as conn:
        conn.execute(text("DROP TABLE send_keys"))
        conn.commit()
    with pytest.raises(ConfigError, match="some of the bus's tables"):
        migrate_blocking(empty_database_url)
    with connected(empty_database_url) as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()


async def test_an_unknown_revision_is_refused(database_url: str) -> None:
    with connected(database_url) as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'zz99'"))
        conn.commit()
    engine = make_engine(database_url)
    try:
        with pytest.raises(ConfigError, match="revision zz99, which this release does not know"):
            await require_current(engine)
    finally:
        await engine.dispose()
    with pytest.raises(ConfigError, match="cannot migrate"):
        migrate_blocking(database_url)
