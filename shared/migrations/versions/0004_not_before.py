"""Delayed start: ``tasks.not_before``, when a `scheduled` task may start.

A nullable column without a default: adding it rewrites nothing, on PostgreSQL and SQLite alike.
No index: no query looks tasks up by it (a scheduled task waits in RabbitMQ, not in a table).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of shared.models.UtcDateTime's database type (a migration must not change when
# models do).
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("not_before", Timestamp, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("not_before")
