"""The guard against a change to shared/models.py without a migration (like `alembic check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String
from sqlmodel import SQLModel

from shared import models  # noqa: F401  (registers the tables)
from shared.db import migration_engine
from shared.migrate import BASELINE, MIGRATIONS, alembic_config, head, migrate_blocking


def drift(url: str, metadata: MetaData) -> list[Any]:
    engine = migration_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_the_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bus.db'}"
    assert migrate_blocking(url) == head()
    # Non-empty: a model changed without a revision. Write one (docs/operations.md).
    assert drift(url, SQLModel.metadata) == []


def test_the_guard_sees_a_model_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bus.db'}"
    migrate_blocking(url)
    changed = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["tasks"].append_column(Column("mood", String(8)))
    assert [d[0] for d in drift(url, changed)] == ["add_column"]


def test_one_linear_history_from_the_baseline() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "two heads: merge them (alembic merge)"
    revisions = list(script.walk_revisions())
    assert revisions[-1].revision == BASELINE
    assert revisions[-1].down_revision is None
    for revision in revisions:
        # Files are named <revision>_<slug>.py, so their order on disk is the history's.
        assert Path(revision.path).name.startswith(f"{revision.revision}_"), revision.path
        assert Path(revision.path).parent == MIGRATIONS / "versions"
