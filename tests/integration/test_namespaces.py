"""Two namespaces and one database: the first to start claims it, the other is refused; on
PostgreSQL each may have a schema of its own in the same database."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.tracker.lifecycle import Entry
from services.tracker.store import Store
from shared.db import make_engine
from shared.errors import ConfigError
from shared.ids import utcnow
from shared.migrate import claim, migrate, require_current
from shared.models import Task
from shared.schemas import TaskMessage

TASKS = Task.__table__  # type: ignore[attr-defined]


def send(task_id: str) -> Entry:
    return Entry.from_task(
        TaskMessage.model_validate(
            {"task_id": task_id, "from": "m", "to": "child", "created_at": utcnow()}
        )
    )


async def test_the_first_namespace_claims_the_database(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await claim(engine, "alpha")
        await claim(engine, "alpha")  # its own again: every start
        with pytest.raises(ConfigError, match="namespace 'alpha', not 'beta'"):
            await claim(engine, "beta")
    finally:
        await engine.dispose()


@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
async def test_namespaces_with_schemas_of_their_own_share_a_database(
    empty_database_url: str,
) -> None:
    """`?options=-csearch_path%3D<schema>`: `convbus migrate` creates the schema and its tables;
    each namespace claims its schema, and reads only its own tasks."""
    urls = {ns: f"{empty_database_url}?options=-csearch_path%3D{ns}" for ns in ("alpha", "beta")}
    engines = {}
    try:
        for ns, url in urls.items():
            await migrate(url)
            engines[ns] = engine = make_engine(url)
            await require_current(engine)
            await claim(engine, ns)
            await Store(engine).write([send(f"task-of-{ns}")])
        for ns, engine in engines.items():
            async with engine.connect() as conn:
                ids = list((await conn.execute(select(TASKS.c.task_id))).scalars())
            assert ids == [f"task-of-{ns}"]
    finally:
        for engine in engines.values():
            await engine.dispose()
