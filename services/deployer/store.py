"""The deployer's tables: enrolment tokens, devices, device removals, deployments,
targets, sequences, request keys.

The database is the truth about what each device should run; MQTT state is reconciled
against it. Tables are prefixed ``deployer_`` so they can share a database with others.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Deployment",
    "Device",
    "DeviceRemoval",
    "EnrollmentToken",
    "ModelSequence",
    "RequestKey",
    "Target",
    "live_device",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class EnrollmentToken(Base):
    __tablename__ = "deployer_enrollment_tokens"

    #: SHA-256 of the token: the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(128))
    group: Mapped[str | None] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by: Mapped[str | None] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(200), default="")


class Device(Base):
    __tablename__ = "deployer_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str | None] = mapped_column(String(128), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    public_key: Mapped[str] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mqtt_username: Mapped[str] = mapped_column(String(128))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    active_model: Mapped[str | None] = mapped_column(String(128))
    active_version: Mapped[str | None] = mapped_column(String(128))
    active_artifact: Mapped[str | None] = mapped_column(String(64))
    active_sequence: Mapped[int | None] = mapped_column(Integer)
    previous_model: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(128))
    previous_artifact: Mapped[str | None] = mapped_column(String(64))
    last_rejection: Mapped[str | None] = mapped_column(Text)


class DeviceRemoval(Base):
    """A device taken out of the fleet: its ``Device`` row and its targets stay as history.

    The row goes when the device enrols again.
    """

    __tablename__ = "deployer_device_removals"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("deployer_devices.device_id"), primary_key=True
    )
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    removed_by: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    #: The ``eaf.device.removed`` event's id: a repeated removal publishes the same one.
    event_id: Mapped[str] = mapped_column(String(36))


class ModelSequence(Base):
    """The per-model manifest sequence: only grows (devices refuse anything lower)."""

    __tablename__ = "deployer_sequences"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class Deployment(Base):
    __tablename__ = "deployer_deployments"

    deployment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="deploy")
    rollback_of: Mapped[str | None] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    artifact_id: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    #: Cumulative number of targets at the end of each wave.
    waves: Mapped[list[Any]] = mapped_column(JSON)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    success_threshold: Mapped[float] = mapped_column(Float)
    error_threshold: Mapped[float] = mapped_column(Float)
    auto_rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    device_timeout: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), index=True)
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Target(Base):
    __tablename__ = "deployer_targets"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployer_deployments.deployment_id"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    wave: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    artifact_id: Mapped[str] = mapped_column(String(64), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    chunks_received: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    broadcast: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest_expires_at: Mapped[int | None] = mapped_column(Integer)
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestKey(Base):
    """An idempotency key: the deployment a create or rollback request made.

    Written in the transaction that creates the deployment; the primary key makes a
    concurrent retry with the same key fail instead of creating a second one.
    """

    __tablename__ = "deployer_request_keys"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: ``create`` or ``rollback``.
    operation: Mapped[str] = mapped_column(String(16))
    #: SHA-256 (hex) of the request's fields: a retry must repeat them exactly.
    fingerprint: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


async def live_device(s: AsyncSession, device_id: str) -> Device | None:
    """The device, unless it is unknown or was removed (its reports are ignored)."""
    found = await s.scalar(
        select(Device)
        .outerjoin(DeviceRemoval, DeviceRemoval.device_id == Device.device_id)
        .where(Device.device_id == device_id, DeviceRemoval.device_id.is_(None))
    )
    return found
