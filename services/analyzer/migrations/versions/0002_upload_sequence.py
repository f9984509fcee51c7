"""Each analysis records the registry's upload sequence of its version, so a new version
is diffed against the one uploaded before it. Rows made before stay null.

Revision ID: analyzer_0002
Revises: analyzer_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "analyzer_0002"
down_revision = "analyzer_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("analyzer_reports") as batch_op:
        batch_op.add_column(sa.Column("sequence", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analyzer_reports") as batch_op:
        batch_op.drop_column("sequence")
