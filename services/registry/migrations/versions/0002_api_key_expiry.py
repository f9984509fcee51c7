"""API keys expire: ``registry_api_keys.expires_at``.

Keys that exist keep no expiry (NULL); ``api.unexpiring_key_max_age_days`` can still limit
their age when the operator sets it (docs/security.md).

Revision ID: registry_0002
Revises: registry_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database adopted by registry_0001 from tables made by the models may have it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("registry_api_keys")}
    if "expires_at" in columns:
        return
    with op.batch_alter_table("registry_api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
