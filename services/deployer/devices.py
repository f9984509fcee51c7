"""The device registry: listing and labels, presence (online, last seen), removal."""

from __future__ import annotations

import contextlib
import uuid

import aiomqtt
from sqlalchemy import select, update

from schemas.deployer import (
    Capabilities,
    DeviceInfo,
    DeviceList,
    ListDevices,
    RemoveDevice,
    SetLabels,
)
from schemas.events import DeviceOnline, DeviceRemoved, Event, TargetState
from schemas.registry import VersionInUse, VersionsInUseReply, VersionsInUseRequest
from services.common.artifacts import ArtifactError
from services.common.logging import get_logger
from services.common.mqtt_admin import (
    DynsecNotFoundError,
    MqttAdmin,
    MqttAdminError,
    device_role_name,
)
from services.deployer.context import DeployerContext, aware
from services.deployer.domain import ACTIVE_STATUSES
from services.deployer.errors import DeviceNotFound, DeviceRemovalIncomplete, DeviceWasRemoved
from services.deployer.manifests import ChunkGrants, Manifests
from services.deployer.mqtt import MqttUnavailableError
from services.deployer.store import (
    Deployment,
    Device,
    DeviceRemoval,
    Target,
    live_device,
    utcnow,
)
from services.deployer.store import EnrollmentToken as TokenRow
from services.deployer.supervisor import Supervisor
from services.deployer.targets import REMOVED_DETAIL, cancel

__all__ = ["REVOKED", "Devices"]

log = get_logger(__name__)

#: ``used_by`` of an enrolment token revoked because its device was removed.
REVOKED = "revoked: device removed"


def _device_info(d: Device, removal: DeviceRemoval | None = None) -> DeviceInfo:
    return DeviceInfo(
        device_id=d.device_id,
        group=d.group,
        labels=dict(d.labels or {}),
        capabilities=Capabilities.model_validate(d.capabilities or {"onnxruntime_version": ""}),
        online=bool(d.online) and removal is None,
        last_seen=aware(d.last_seen),
        enrolled_at=aware(d.enrolled_at) or utcnow(),
        active_model=d.active_model,
        active_version=d.active_version,
        previous_model=d.previous_model,
        previous_version=d.previous_version,
        last_rejection=d.last_rejection,
        removed_at=aware(removal.removed_at) if removal is not None else None,
        removed_by=removal.removed_by if removal is not None else None,
        removal_reason=removal.reason if removal is not None else None,
    )


class Devices:
    """Enrolled devices: what they run, whether they are there, taking one out of the fleet."""

    def __init__(
        self,
        ctx: DeployerContext,
        *,
        admin: MqttAdmin,
        manifests: Manifests,
        grants: ChunkGrants,
        supervisor: Supervisor,
    ) -> None:
        self.ctx = ctx
        self.admin = admin
        self.manifests = manifests
        self.grants = grants
        self.supervisor = supervisor

    async def list_devices(self, req: ListDevices) -> DeviceList:
        async with self.ctx.sessions() as s:
            rows = (await s.scalars(select(Device).order_by(Device.device_id))).all()
            removed = {r.device_id: r for r in (await s.scalars(select(DeviceRemoval))).all()}
        out = []
        for d in rows:
            if d.device_id in removed and not req.include_removed:
                continue
            if req.group is not None and d.group != req.group:
                continue
            if req.online is not None and bool(d.online) != req.online:
                continue
            if req.labels and any((d.labels or {}).get(k) != v for k, v in req.labels.items()):
                continue
            out.append(_device_info(d, removed.get(d.device_id)))
        return DeviceList(devices=tuple(out))

    async def get_device(self, device_id: str) -> DeviceInfo:
        """One device; a removed one too (with ``removed_at``), as history."""
        async with self.ctx.sessions() as s:
            d = await s.get(Device, device_id)
            if d is None:
                raise DeviceNotFound(device_id)
            return _device_info(d, await s.get(DeviceRemoval, device_id))

    async def set_labels(self, req: SetLabels) -> DeviceInfo:
        async with self.ctx.sessions.begin() as s:
            d = await s.get(Device, req.device_id)
            if d is None:
                raise DeviceNotFound(req.device_id)
            if await s.get(DeviceRemoval, req.device_id) is not None:
                raise DeviceWasRemoved(req.device_id, "change its labels")
            d.labels = dict(req.labels)
            if req.group is not None:
                d.group = req.group or None
            return _device_info(d)

    async def remove_device(self, req: RemoveDevice) -> DeviceInfo:
        """Take a device out of the fleet (see docs/deployment.md); a repeat is safe.

        The database first: the device is marked removed, its unused enrolment tokens are
        revoked and its unfinished targets cancelled, in one transaction. Then its broker
        account and role go (the broker disconnects it at once), its retained topics are
        cleared and ``eaf.device.removed`` is published. Should a broker step fail, the
        error says so and a repeat finishes the job, publishing the same event.
        """
        device_id = req.device_id
        events: list[Event] = []
        affected: set[str] = set()  # deployments with a target cancelled now
        async with self.ctx.sessions.begin() as s:
            d = await s.get(Device, device_id, with_for_update=True)
            if d is None:
                raise DeviceNotFound(device_id)
            removal = await s.get(DeviceRemoval, device_id)
            if removal is None:
                now = utcnow()
                removal = DeviceRemoval(
                    device_id=device_id,
                    removed_at=now,
                    removed_by=req.removed_by,
                    reason=req.reason,
                    event_id=str(uuid.uuid4()),
                )
                s.add(removal)
                d.online = False
                await s.execute(
                    update(TokenRow)
                    .where(TokenRow.device_id == device_id, TokenRow.used_at.is_(None))
                    .values(used_at=now, used_by=REVOKED)
                )
                unfinished = (
                    await s.scalars(
                        select(Target).where(
                            Target.device_id == device_id,
                            Target.state.not_in([st.value for st in TargetState if st.terminal]),
                        )
                    )
                ).all()
                events += [cancel(t, REMOVED_DETAIL, now) for t in unfinished]
                affected = {t.deployment_id for t in unfinished}
                log.info("device removed", device=device_id, by=req.removed_by,
                         cancelled_targets=len(unfinished))  # fmt: skip
            info = _device_info(d, removal)
            removed = DeviceRemoved(
                event_id=uuid.UUID(removal.event_id),
                occurred_at=aware(removal.removed_at) or utcnow(),
                device_id=device_id,
                removed_by=removal.removed_by,
                reason=removal.reason,
            )
        self.grants.forget(device_id)
        self.supervisor.not_waiting_for(device_id)
        await self.ctx.events.emit(events)
        await self._revoke_broker_access(device_id)
        await self._clear_retained(device_id)
        await self.ctx.events.emit([removed])
        # A deployment that waited only for this device completes, on a pass of its own.
        for deployment_id in affected:
            self.supervisor.supervise_soon(deployment_id)
        return info

    async def _revoke_broker_access(self, device_id: str) -> None:
        # Deleting the client disconnects a connected device; its role goes with it.
        try:
            with contextlib.suppress(DynsecNotFoundError):
                await self.admin.delete_client(device_id)
            with contextlib.suppress(DynsecNotFoundError):
                await self.admin.delete_role(device_role_name(device_id))
        except MqttAdminError as exc:
            raise DeviceRemovalIncomplete(
                device_id, "deleting its broker account", str(exc)
            ) from None

    async def _clear_retained(self, device_id: str) -> None:
        # Its last manifest (sealed to its key), its state and online flag: a device that
        # enrols again under this id starts from nothing, and listeners forget this one.
        topics = (
            self.ctx.topics.desired(device_id),
            self.ctx.topics.state(device_id),
            self.ctx.topics.online(device_id),
        )
        try:
            for topic in topics:
                await self.ctx.link.publish(topic, b"", qos=1, retain=True)
        except (MqttUnavailableError, aiomqtt.MqttError) as exc:
            raise DeviceRemovalIncomplete(
                device_id, "clearing its retained topics", str(exc)
            ) from None

    async def on_online(self, device_id: str, online: bool, *, retained: bool = False) -> None:
        """A device's ``online`` flag: ``1`` when it connects, ``0`` when it stops (its
        goodbye), loses the connection (its will) or is kicked by the platform.

        ``last_seen`` moves when the device is heard now: a live ``1``, or a live ``0``
        while it was online (it was there until now). A ``0`` for a device already offline
        is the platform's own (see ``mark_kicked``); a ``retained`` flag, delivered on
        subscribe, is what the device said when it was last heard, no sign of life.
        """
        due: list[tuple[Target, Device]] = []
        changed = False
        async with self.ctx.sessions.begin() as s:
            d = await live_device(s, device_id)
            if d is None:
                return
            changed = bool(d.online) != online
            if not retained and (online or d.online):
                d.last_seen = utcnow()
            d.online = online
            if online:
                # The database is the truth: whatever this device should be doing is sent
                # again, with a fresh expiry (the device resumes, or ignores a duplicate).
                rows = (
                    await s.execute(
                        select(Target)
                        .join(Deployment, Deployment.deployment_id == Target.deployment_id)
                        .where(
                            Target.device_id == device_id,
                            Deployment.status.in_(ACTIVE_STATUSES),
                            Target.state.in_(
                                [
                                    TargetState.NOTIFIED.value,
                                    TargetState.DOWNLOADING.value,
                                    TargetState.VERIFYING.value,
                                    TargetState.ACTIVATING.value,
                                ]
                            ),
                        )
                    )
                ).scalars()
                due = [(t, d) for t in rows]
                for t, _ in due:
                    t.last_progress_at = utcnow()
        for t, dev in due:
            try:
                await self.manifests.publish(t, dev)
            except (MqttUnavailableError, aiomqtt.MqttError, ArtifactError) as exc:
                log.warning("manifest not re-issued", device=device_id, error=str(exc))
        if changed:
            await self.ctx.events.emit([DeviceOnline(device_id=device_id, online=online)])

    async def mark_kicked(self, device_id: str, was_online: bool) -> None:
        """The platform replaced the device's broker credentials (the broker drops it and
        sends no will): make the retained ``online`` say so, and tell listeners. The
        database row was set offline in the same transaction as the new credentials."""
        try:
            await self.ctx.link.publish(self.ctx.topics.online(device_id), b"0", qos=1, retain=True)
        except (MqttUnavailableError, aiomqtt.MqttError) as exc:
            log.warning("retained online flag not reset", device=device_id, error=str(exc))
        if was_online:
            await self.ctx.events.emit([DeviceOnline(device_id=device_id, online=False)])

    async def versions_in_use(self, req: VersionsInUseRequest) -> VersionsInUseReply:
        found: dict[tuple[str, str], str] = {}
        async with self.ctx.sessions() as s:
            live = select(Device).where(Device.device_id.not_in(select(DeviceRemoval.device_id)))
            for d in (await s.scalars(live)).all():
                if d.active_model and d.active_version:
                    found.setdefault((d.active_model, d.active_version), "active")
                if d.previous_model and d.previous_version:
                    found.setdefault((d.previous_model, d.previous_version), "rollback_target")
            rows = await s.execute(
                select(Target.model, Target.version)
                .join(Deployment, Deployment.deployment_id == Target.deployment_id)
                .where(Deployment.status.in_(ACTIVE_STATUSES))
                .distinct()
            )
            for model, version in rows:
                found.setdefault((model, version), "deploying")
        items = [
            VersionInUse.model_validate({"model": m, "version": v, "reason": r})
            for (m, v), r in sorted(found.items())
            if req.model is None or m == req.model
        ]
        return VersionsInUseReply(versions=tuple(items))
