"""Baseline: the schema as `create_all` made it before migrations (tasks, log_entries, send_keys).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of shared.models' column types: a migration must not change when models do.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# shared.models.UtcDateTime is a TypeDecorator over this; the database sees only this.
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("sender", sa.String(64)),
        sa.Column("recipient", sa.String(64)),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("cmd", sa.String(128)),
        sa.Column("payload", Json),
        sa.Column("text", sa.Text()),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("child_id", sa.String(64)),
        sa.Column("result", Json),
        sa.Column("error", sa.Text()),
        sa.Column("next_attempt_at", Timestamp),
        sa.Column("send_seen", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp),
    )
    op.create_index("ix_tasks_conversation", "tasks", ["conversation_id"])
    op.create_index("ix_tasks_state_updated", "tasks", ["state", "updated_at"])

    op.create_table(
        "log_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(160), nullable=False, unique=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("ts", Timestamp, nullable=False),
        sa.Column("task_id", sa.String(128)),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("sender", sa.String(64)),
        sa.Column("recipient", sa.String(64)),
        sa.Column("data", Json, nullable=False),
    )
    op.create_index("ix_log_task", "log_entries", ["task_id", "id"])
    op.create_index("ix_log_conversation", "log_entries", ["conversation_id", "id"])
    op.create_index("ix_log_sender", "log_entries", ["sender", "id"])
    op.create_index("ix_log_recipient", "log_entries", ["recipient", "id"])
    op.create_index("ix_log_event", "log_entries", ["event", "id"])

    op.create_table(
        "send_keys",
        sa.Column("key", sa.String(140), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("pool", sa.String(64)),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("confirmed", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("send_keys")
    op.drop_table("log_entries")  # its indexes go with it
    op.drop_table("tasks")
