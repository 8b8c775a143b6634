"""Indexes for the dashboard's task list (GET /tasks, newest first, by each of its filters) and
its overview (the tasks that ended in the last minute):

- ``ix_tasks_created`` (created_at, task_id): the unfiltered list, a time range, the tasks sent
  in the last minute;
- ``ix_tasks_state_created``, ``ix_tasks_sender_created``, ``ix_tasks_cmd_created``: by state,
  sender, command;
- ``ix_tasks_recipient`` and ``ix_tasks_conversation`` gain created_at (rebuilt): by pool and
  by conversation;
- ``ix_tasks_completed``: the tasks that ended since a time, partial.

Built in the revision's transaction, as 0002's (it says why not CONCURRENTLY): writes to the
tasks table wait while they are built, about 3 s per index at a million tasks here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMPLETED = "completed_at IS NOT NULL"
NEW: list[tuple[str, list[str]]] = [
    ("ix_tasks_created", ["created_at", "task_id"]),
    ("ix_tasks_state_created", ["state", "created_at"]),
    ("ix_tasks_sender_created", ["sender", "created_at"]),
    ("ix_tasks_cmd_created", ["cmd", "created_at"]),
]
#: Rebuilt with created_at after the column they had: (name, column).
WIDENED: list[tuple[str, str]] = [
    ("ix_tasks_recipient", "recipient"),
    ("ix_tasks_conversation", "conversation_id"),
]


def upgrade() -> None:
    for name, columns in NEW:
        op.create_index(name, "tasks", columns)
    for name, column in WIDENED:
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", [column, "created_at"])
    op.create_index(
        "ix_tasks_completed",
        "tasks",
        ["completed_at"],
        postgresql_where=sa.text(_COMPLETED),
        sqlite_where=sa.text(_COMPLETED),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_completed", table_name="tasks")
    for name, column in WIDENED:
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", [column])
    for name, _ in reversed(NEW):
        op.drop_index(name, table_name="tasks")
