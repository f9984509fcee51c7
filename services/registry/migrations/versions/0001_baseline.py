"""The registry tables as they stood when migrations began: models, versions, tags,
aliases and API keys.

Revision ID: registry_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations has some or all of these tables: keep them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "registry_api_keys" not in existing:
        op.create_table(
            "registry_api_keys",
            sa.Column("key_id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("role", sa.String(length=16), nullable=False),
            sa.Column("secret_hash", sa.String(length=64), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("created_by", sa.String(length=200), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("key_id"),
        )
    if "registry_models" not in existing:
        op.create_table(
            "registry_models",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_sequence", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name"),
        )
    if "registry_versions" not in existing:
        op.create_table(
            "registry_versions",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("model_id", sa.Integer(), nullable=False),
            sa.Column("version", sa.String(length=128), nullable=False),
            sa.Column("sequence", sa.BigInteger(), nullable=False),
            sa.Column("artifact_id", sa.String(length=64), nullable=False),
            sa.Column("size_bytes", sa.BigInteger(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("task", sa.String(length=200), nullable=False),
            sa.Column("framework", sa.String(length=100), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("tags", sa.JSON(), nullable=False),
            sa.Column("properties", sa.JSON(), nullable=False),
            sa.Column("source_url", sa.Text(), nullable=False),
            sa.Column("parent_version", sa.String(length=128), nullable=True),
            sa.Column("uploaded_by", sa.String(length=200), nullable=False),
            sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("reference_artifact_id", sa.String(length=64), nullable=True),
            sa.Column("uploaded_event_id", sa.String(length=36), nullable=False),
            sa.Column("validation_report", sa.JSON(), nullable=True),
            sa.Column("analysis_report", sa.JSON(), nullable=True),
            sa.Column("rejection_reason", sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("model_id", "sequence"),
            sa.UniqueConstraint("model_id", "version"),
        )
        op.create_index(
            op.f("ix_registry_versions_artifact_id"),
            "registry_versions",
            ["artifact_id"],
            unique=False,
        )
    if "registry_aliases" not in existing:
        op.create_table(
            "registry_aliases",
            sa.Column("model_id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("version_id", sa.Integer(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(
                ["version_id"],
                ["registry_versions.id"],
            ),
            sa.PrimaryKeyConstraint("model_id", "name"),
        )
    if "registry_version_tags" not in existing:
        op.create_table(
            "registry_version_tags",
            sa.Column("version_id", sa.Integer(), nullable=False),
            sa.Column("tag", sa.String(length=64), nullable=False),
            sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("version_id", "tag"),
        )
        op.create_index(
            op.f("ix_registry_version_tags_tag"), "registry_version_tags", ["tag"], unique=False
        )


def downgrade() -> None:
    op.drop_table("registry_version_tags")
    op.drop_table("registry_aliases")
    op.drop_table("registry_versions")
    op.drop_table("registry_models")
    op.drop_table("registry_api_keys")
