"""Webhooks: ``tasks.notify`` (a send's webhook) and ``webhook_outbox`` (deliveries recorded,
not yet confirmed published).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of shared.models' database types (a migration must not change when models do).
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("notify", Json, nullable=True))
    op.create_table(
        "webhook_outbox",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_outbox")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("notify")
