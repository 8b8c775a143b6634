"""Inboxes: ``tasks.outcome_id`` (the entry that ended a task, in its sender's inbox) and
``inbox_cursors`` (how far each party acknowledged reading).

A nullable column without a default (rewrites nothing) and its partial index, which holds only
ended tasks. Tasks that ended before this migration have no outcome_id: their outcomes are not
in the inbox (their entries stay in the log).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of shared.models' database types (a migration must not change when models do).
Timestamp = sa.DateTime(timezone=True)
LogId = sa.BigInteger()


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("outcome_id", LogId, nullable=True))
    op.create_index(
        "ix_tasks_sender_outcome",
        "tasks",
        ["sender", "outcome_id"],
        postgresql_where=sa.text("outcome_id IS NOT NULL"),
        sqlite_where=sa.text("outcome_id IS NOT NULL"),
    )
    op.create_table(
        "inbox_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("acked_id", LogId, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inbox_cursors")
    op.drop_index("ix_tasks_sender_outcome", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("outcome_id")
