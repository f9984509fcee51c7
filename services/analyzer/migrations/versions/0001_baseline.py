"""The analyzer tables as they stood when migrations began: the last analysis of every version.

Revision ID: analyzer_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "analyzer_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations has some or all of these tables: keep them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "analyzer_reports" not in existing:
        op.create_table(
            "analyzer_reports",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("model", sa.String(length=128), nullable=False),
            sa.Column("version", sa.String(length=128), nullable=False),
            sa.Column("artifact_id", sa.String(length=64), nullable=False),
            sa.Column("report", sa.Text(), nullable=False),
            sa.Column("analyzed_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("model", "version"),
        )
        op.create_index(
            op.f("ix_analyzer_reports_model"), "analyzer_reports", ["model"], unique=False
        )


def downgrade() -> None:
    op.drop_table("analyzer_reports")
