"""Leases of long runs and handlers' progress: three columns of `tasks` and a partial index.

- ``lease_until``: until when the child holding a run past its hold answers for it;
- ``progress``, ``progress_note``: the handler's last progress report;
- ``ix_tasks_lease_until``: the lease sweep's, over the few rows that hold a lease.

Adding nullable columns without a default rewrites nothing, on PostgreSQL and SQLite alike.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOLDS_A_LEASE = "lease_until IS NOT NULL"
# A frozen copy of shared.models.UtcDateTime's database type (a migration must not change when
# models do).
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=True))
        batch.add_column(sa.Column("progress_note", sa.Text(), nullable=True))
    op.create_index(
        "ix_tasks_lease_until",
        "tasks",
        ["lease_until"],
        postgresql_where=sa.text(_HOLDS_A_LEASE),
        sqlite_where=sa.text(_HOLDS_A_LEASE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_lease_until", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("progress_note")
        batch.drop_column("progress")
        batch.drop_column("lease_until")
