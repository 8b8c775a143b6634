"""The namespace that owns the database: ``bus_owner``, one row.

Created empty: on a database made by an earlier release, the first API or tracker to start
after the upgrade claims it for its namespace (the one that recorded what is there).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of shared.models' timestamp type (a migration must not change when models do).
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bus_owner",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("namespace", sa.String(40), nullable=False),
        sa.Column("claimed_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bus_owner")
