"""The deployer tables as they stood when migrations began.

Enrolment tokens, devices, removals, deployments, targets, sequences and request keys.

Revision ID: deployer_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "deployer_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations has some or all of these tables: keep them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "deployer_deployments" not in existing:
        op.create_table(
            "deployer_deployments",
            sa.Column("deployment_id", sa.String(length=36), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("rollback_of", sa.String(length=36), nullable=True),
            sa.Column("model", sa.String(length=128), nullable=False),
            sa.Column("version", sa.String(length=128), nullable=False),
            sa.Column("artifact_id", sa.String(length=64), nullable=False),
            sa.Column("strategy", sa.String(length=16), nullable=False),
            sa.Column("waves", sa.JSON(), nullable=False),
            sa.Column("current_wave", sa.Integer(), nullable=False),
            sa.Column("success_threshold", sa.Float(), nullable=False),
            sa.Column("error_threshold", sa.Float(), nullable=False),
            sa.Column("auto_rollback", sa.Boolean(), nullable=False),
            sa.Column("device_timeout", sa.Float(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("outcome", sa.String(length=16), nullable=True),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("created_by", sa.String(length=200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("deployment_id"),
        )
        op.create_index(
            op.f("ix_deployer_deployments_model"), "deployer_deployments", ["model"], unique=False
        )
        op.create_index(
            op.f("ix_deployer_deployments_status"), "deployer_deployments", ["status"], unique=False
        )
    if "deployer_devices" not in existing:
        op.create_table(
            "deployer_devices",
            sa.Column("device_id", sa.String(length=128), nullable=False),
            sa.Column("group", sa.String(length=128), nullable=True),
            sa.Column("labels", sa.JSON(), nullable=False),
            sa.Column("public_key", sa.String(length=64), nullable=False),
            sa.Column("capabilities", sa.JSON(), nullable=False),
            sa.Column("mqtt_username", sa.String(length=128), nullable=False),
            sa.Column("online", sa.Boolean(), nullable=False),
            sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
            sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("active_model", sa.String(length=128), nullable=True),
            sa.Column("active_version", sa.String(length=128), nullable=True),
            sa.Column("active_artifact", sa.String(length=64), nullable=True),
            sa.Column("active_sequence", sa.Integer(), nullable=True),
            sa.Column("previous_model", sa.String(length=128), nullable=True),
            sa.Column("previous_version", sa.String(length=128), nullable=True),
            sa.Column("previous_artifact", sa.String(length=64), nullable=True),
            sa.Column("last_rejection", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("device_id"),
        )
        op.create_index(
            op.f("ix_deployer_devices_group"), "deployer_devices", ["group"], unique=False
        )
    if "deployer_enrollment_tokens" not in existing:
        op.create_table(
            "deployer_enrollment_tokens",
            sa.Column("token_hash", sa.String(length=64), nullable=False),
            sa.Column("device_id", sa.String(length=128), nullable=True),
            sa.Column("group", sa.String(length=128), nullable=True),
            sa.Column("labels", sa.JSON(), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("used_by", sa.String(length=128), nullable=True),
            sa.Column("created_by", sa.String(length=200), nullable=False),
            sa.PrimaryKeyConstraint("token_hash"),
        )
    if "deployer_request_keys" not in existing:
        op.create_table(
            "deployer_request_keys",
            sa.Column("request_id", sa.String(length=128), nullable=False),
            sa.Column("operation", sa.String(length=16), nullable=False),
            sa.Column("fingerprint", sa.String(length=64), nullable=False),
            sa.Column("deployment_id", sa.String(length=36), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("request_id"),
        )
        op.create_index(
            op.f("ix_deployer_request_keys_created_at"),
            "deployer_request_keys",
            ["created_at"],
            unique=False,
        )
    if "deployer_sequences" not in existing:
        op.create_table(
            "deployer_sequences",
            sa.Column("model", sa.String(length=128), nullable=False),
            sa.Column("last", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("model"),
        )
    if "deployer_device_removals" not in existing:
        op.create_table(
            "deployer_device_removals",
            sa.Column("device_id", sa.String(length=128), nullable=False),
            sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("removed_by", sa.String(length=200), nullable=False),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("event_id", sa.String(length=36), nullable=False),
            sa.ForeignKeyConstraint(
                ["device_id"],
                ["deployer_devices.device_id"],
            ),
            sa.PrimaryKeyConstraint("device_id"),
        )
    if "deployer_targets" not in existing:
        op.create_table(
            "deployer_targets",
            sa.Column("deployment_id", sa.String(length=36), nullable=False),
            sa.Column("device_id", sa.String(length=128), nullable=False),
            sa.Column("wave", sa.Integer(), nullable=False),
            sa.Column("model", sa.String(length=128), nullable=False),
            sa.Column("version", sa.String(length=128), nullable=False),
            sa.Column("artifact_id", sa.String(length=64), nullable=False),
            sa.Column("sequence", sa.Integer(), nullable=False),
            sa.Column("rollback", sa.Boolean(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
            sa.Column("chunks_received", sa.Integer(), nullable=False),
            sa.Column("chunk_count", sa.Integer(), nullable=False),
            sa.Column("bytes_received", sa.Integer(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("broadcast", sa.Boolean(), nullable=False),
            sa.Column("manifest_expires_at", sa.Integer(), nullable=True),
            sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_progress_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["deployment_id"],
                ["deployer_deployments.deployment_id"],
            ),
            sa.PrimaryKeyConstraint("deployment_id", "device_id"),
        )
        op.create_index(
            op.f("ix_deployer_targets_artifact_id"),
            "deployer_targets",
            ["artifact_id"],
            unique=False,
        )
        op.create_index(
            op.f("ix_deployer_targets_device_id"), "deployer_targets", ["device_id"], unique=False
        )
        op.create_index(
            op.f("ix_deployer_targets_state"), "deployer_targets", ["state"], unique=False
        )


def downgrade() -> None:
    op.drop_table("deployer_targets")
    op.drop_table("deployer_device_removals")
    op.drop_table("deployer_sequences")
    op.drop_table("deployer_request_keys")
    op.drop_table("deployer_enrollment_tokens")
    op.drop_table("deployer_devices")
    op.drop_table("deployer_deployments")
