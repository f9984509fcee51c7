"""The common tables as they stood when migrations began: processed events, which make
event handlers idempotent.

Revision ID: common_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "common_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations has some or all of these tables: keep them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "processed_events" not in existing:
        op.create_table(
            "processed_events",
            sa.Column("consumer", sa.String(length=128), nullable=False),
            sa.Column("event_id", sa.String(length=36), nullable=False),
            sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("consumer", "event_id"),
        )


def downgrade() -> None:
    op.drop_table("processed_events")
