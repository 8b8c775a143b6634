"""Indexes for retention (`convbus prune`) and for the list of pools.

- ``ix_tasks_recipient``: the pools, one index probe each (a loose index scan);
- ``ix_log_untied_ts``: log entries of no task (messages) by time, partial;
- ``ix_send_keys_task``: the send keys of the tasks a prune deletes;
- ``ix_send_keys_unconfirmed``: send keys RabbitMQ never confirmed, by time, partial.

Built in the revision's transaction, not CONCURRENTLY: a concurrent build waits for every
open transaction, a second `convbus migrate` waiting for the migration lock included, which
deadlocks. Writes to a table wait while its index is built: about 10 s in all at 10 million log
entries (docs/operations.md, "Retention and indexes"); reads go on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns, partial index condition per dialect)
INDEXES: list[tuple[str, str, list[str], dict[str, str]]] = [
    ("ix_tasks_recipient", "tasks", ["recipient"], {}),
    (
        "ix_log_untied_ts",
        "log_entries",
        ["ts"],
        {"postgresql": "task_id IS NULL", "sqlite": "task_id IS NULL"},
    ),
    ("ix_send_keys_task", "send_keys", ["task_id"], {}),
    (
        "ix_send_keys_unconfirmed",
        "send_keys",
        ["created_at"],
        {"postgresql": "NOT confirmed", "sqlite": "confirmed = 0"},
    ),
]


def _where(conditions: dict[str, str]) -> dict[str, Any]:
    return {f"{dialect}_where": sa.text(text) for dialect, text in conditions.items()}


def upgrade() -> None:
    for name, table, columns, where in INDEXES:
        op.create_index(name, table, columns, **_where(where))


def downgrade() -> None:
    for name, table, _, _ in reversed(INDEXES):
        op.drop_index(name, table)
