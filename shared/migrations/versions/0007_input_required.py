"""Input required: ``tasks.input_round`` and ``tasks.asking`` (the question a task waits on),
``task_answers`` (each question's one answer), and ``task_outbox``, which takes the place of
``webhook_outbox`` and holds tasks answered as well as webhook deliveries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of shared.models' database types (a migration must not change when models do).
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("input_round", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("asking", Json, nullable=True))
    op.create_table(
        "task_answers",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("answered_by", sa.String(64), nullable=False),
        sa.Column("answer", Json, nullable=True),
        sa.Column("answer_hash", sa.String(64), nullable=False),
        sa.Column("answered_at", Timestamp, nullable=False),
    )
    op.create_table(
        "task_outbox",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.execute(
        "INSERT INTO task_outbox (id, body, attempt, created_at) "
        "SELECT task_id, body, 1, created_at FROM webhook_outbox"
    )
    op.drop_table("webhook_outbox")


def downgrade() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.execute(
        "INSERT INTO webhook_outbox (task_id, body, created_at) "
        "SELECT id, body, created_at FROM task_outbox WHERE id NOT LIKE '%/input/%'"
    )
    op.drop_table("task_outbox")
    op.drop_table("task_answers")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("asking")
        batch.drop_column("input_round")
