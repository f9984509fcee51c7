"""Enrolment: one-time tokens, and a device's broker account and key for a token."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.exc import IntegrityError

from schemas import crypto
from schemas.deployer import (
    CreateEnrollmentToken,
    DeviceMqttSettings,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
)
from schemas.events import DeviceEnrolled
from services.common.logging import get_logger
from services.common.mqtt_admin import (
    DynsecAlreadyExistsError,
    MqttAdmin,
    device_role_acls,
    device_role_name,
)
from services.deployer.context import DeployerContext, aware
from services.deployer.devices import REVOKED, Devices
from services.deployer.errors import DeviceIdTaken, EnrollmentRefused
from services.deployer.store import Device, DeviceRemoval, utcnow
from services.deployer.store import EnrollmentToken as TokenRow

__all__ = ["Enrolment"]

log = get_logger(__name__)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stored_key_id(public_key: str | None) -> str | None:
    """The key id of a stored device key; ``None`` for one that is not an X25519 key."""
    try:
        return crypto.key_id(X25519PublicKey.from_public_bytes(base64.b64decode(public_key or "")))
    except ValueError:
        return None


class Enrolment:
    """Makes enrolment tokens and enrols devices with them."""

    def __init__(
        self,
        ctx: DeployerContext,
        *,
        admin: MqttAdmin,
        platform_key: Ed25519PublicKey,
        devices: Devices,
    ) -> None:
        self.ctx = ctx
        self.admin = admin
        self.devices = devices
        raw = platform_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.platform_public_key = base64.b64encode(raw).decode()
        self.platform_key_id = crypto.key_id(platform_key)

    async def create_token(self, req: CreateEnrollmentToken) -> EnrollmentToken:
        token = secrets.token_urlsafe(32)
        # Operators pass the token as `edge-runtime enroll --token X`: one starting with "-"
        # (1 in 64) would be taken for an option, so draw again.
        while token.startswith("-"):
            token = secrets.token_urlsafe(32)
        ttl = req.ttl_seconds or self.ctx.settings.deployer.enrollment_token_ttl
        expires = utcnow() + timedelta(seconds=ttl)
        async with self.ctx.sessions.begin() as s:
            s.add(
                TokenRow(
                    token_hash=_hash_token(token),
                    device_id=req.device_id,
                    group=req.group,
                    labels=dict(req.labels),
                    expires_at=expires,
                    created_by=req.created_by,
                )
            )
        return EnrollmentToken(token=token, expires_at=expires, device_id=req.device_id)

    async def enroll(self, req: EnrollRequest) -> EnrollReply:
        """Enrol a device with a one-time token (see docs/deployment.md, "Enrolment").

        A token made for a device id enrols that id, new or not; a token without one
        enrols only an id that was never enrolled, so it cannot take over a device. A
        refused request leaves the token unused and the broker untouched.
        """
        password = secrets.token_urlsafe(24)
        key_id = crypto.key_id(X25519PublicKey.from_public_bytes(base64.b64decode(req.public_key)))
        async with self.ctx.sessions.begin() as s:
            row = await s.get(TokenRow, _hash_token(req.token), with_for_update=True)
            if row is None:
                raise EnrollmentRefused("unknown token")
            if row.used_at is not None:
                if row.used_by == REVOKED:
                    raise EnrollmentRefused("the token was revoked when its device was removed")
                raise EnrollmentRefused("the token was used already")
            expires_at = aware(row.expires_at)
            if expires_at is not None and expires_at <= utcnow():
                raise EnrollmentRefused("the token expired")
            if row.device_id is not None and row.device_id != req.device_id:
                raise EnrollmentRefused(f"the token is for device {row.device_id!r}")
            made_for_it = row.device_id == req.device_id
            removal = await s.get(DeviceRemoval, req.device_id)
            if removal is not None:
                # Tokens made for it before the removal were revoked then: this one is newer.
                if not made_for_it:
                    raise EnrollmentRefused(
                        f"device {req.device_id!r} was removed from the fleet; only a token "
                        "made for this device id may enrol it again"
                    )
                await s.delete(removal)
                await s.flush()
            device = await s.get(Device, req.device_id, with_for_update=True)
            if device is not None and not made_for_it:
                # New credentials for an enrolled id would lock the real device out and
                # seal its next models to the caller's key.
                raise DeviceIdTaken(req.device_id)
            previous: tuple[datetime | None, str | None] | None = None
            was_online = False
            if device is None:
                device = Device(device_id=req.device_id)
                s.add(device)
            else:
                previous = (aware(device.enrolled_at), _stored_key_id(device.public_key))
                # The broker drops the old session with the old password (no will).
                was_online, device.online = bool(device.online), False
            device.group = row.group
            device.labels = dict(row.labels or {})
            device.public_key = req.public_key
            device.capabilities = req.capabilities.model_dump(mode="json")
            device.mqtt_username = req.device_id
            device.enrolled_at = utcnow()
            row.used_at = utcnow()
            row.used_by = req.device_id
            try:
                # Written before the broker is touched: of two enrolments racing for a new
                # id, the second fails here instead of resetting the first one's password.
                await s.flush()
            except IntegrityError:
                raise DeviceIdTaken(req.device_id) from None
            await self._provision_broker_client(req.device_id, password)
            enrolled = DeviceEnrolled(
                device_id=req.device_id,
                group=device.group,
                labels=dict(device.labels),
                key_id=key_id,
                reenrolled=previous is not None,
                previous_enrolled_at=previous[0] if previous is not None else None,
                previous_key_id=previous[1] if previous is not None else None,
                token_created_by=row.created_by or "",
            )
        if previous is not None:
            log.warning("device re-enrolled: its previous credentials and key are replaced",
                        device=req.device_id, token_created_by=row.created_by,
                        previous_key_id=previous[1], key_id=key_id)  # fmt: skip
        await self.ctx.events.emit([enrolled])
        if previous is not None:
            await self.devices.mark_kicked(req.device_id, was_online)
        cfg = self.ctx.settings
        return EnrollReply(
            device_id=req.device_id,
            mqtt=DeviceMqttSettings(
                host=cfg.deployer.device_mqtt_host or cfg.mqtt.host,
                port=cfg.deployer.device_mqtt_port or cfg.mqtt.port,
                tls=cfg.mqtt.tls,
                username=req.device_id,
                password=password,
                client_id=req.device_id,
                topic_prefix=cfg.mqtt.topic_prefix,
            ),
            platform_public_key=self.platform_public_key,
            platform_key_id=self.platform_key_id,
            window_size=cfg.deployment.window_size,
            stall_timeout=cfg.deployer.stall_timeout,
        )

    async def _provision_broker_client(self, device_id: str, password: str) -> None:
        role = device_role_name(device_id)
        prefix = self.ctx.settings.mqtt.topic_prefix
        try:
            await self.admin.create_role(role, acls=device_role_acls(device_id, prefix))
        except DynsecAlreadyExistsError:
            pass  # the ACLs depend on the device id only
        try:
            await self.admin.create_client(
                device_id, password, roles=[role], clientid=device_id, textname="EdgeAIForge device"
            )
        except DynsecAlreadyExistsError:
            # Re-enrolment: new credentials replace the old ones.
            await self.admin.set_client_password(device_id, password)
