"""The tracker tables as they stood when migrations began: the regressions already announced.

Revision ID: tracker_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations has some or all of these tables: keep them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "tracker_regressions" not in existing:
        op.create_table(
            "tracker_regressions",
            sa.Column("model", sa.String(length=128), nullable=False),
            sa.Column("version", sa.String(length=128), nullable=False),
            sa.Column("baseline_version", sa.String(length=128), nullable=False),
            sa.Column("metric", sa.String(length=32), nullable=False),
            sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("model", "version", "baseline_version", "metric"),
        )


def downgrade() -> None:
    op.drop_table("tracker_regressions")
