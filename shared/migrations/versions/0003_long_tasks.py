"""Long tasks: deadlines, priority, leases of long runs, handlers' progress; five columns of
`tasks`.

- ``deadline``: a task not started by then never starts;
- ``priority``: `high`, or none;
- ``lease_until``: until when the child holding a run past its hold answers for it;
- ``progress``, ``progress_note``: the handler's last progress report;
- ``ix_tasks_deadline``, ``ix_tasks_lease_until``: the tracker's sweep's, partial (over the
  rows that have one);
- the ``cancels`` table: a task's cancel, which the API records before it publishes it.

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

_PARTIAL = {"ix_tasks_deadline": "deadline", "ix_tasks_lease_until": "lease_until"}
# A frozen copy of shared.models.UtcDateTime's database type (a migration must not change when
# models do).
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("deadline", Timestamp, nullable=True))
        batch.add_column(sa.Column("priority", sa.String(8), nullable=True))
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=True))
        batch.add_column(sa.Column("progress_note", sa.Text(), nullable=True))
    for name, column in _PARTIAL.items():
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "tasks", [column], postgresql_where=where, sqlite_where=where)
    op.create_table(
        "cancels",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("canceled_by", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_cancels_created", "cancels", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_cancels_created", "cancels")
    op.drop_table("cancels")
    for name in reversed(_PARTIAL):
        op.drop_index(name, "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("progress_note")
        batch.drop_column("progress")
        batch.drop_column("lease_until")
        batch.drop_column("priority")
        batch.drop_column("deadline")
