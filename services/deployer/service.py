"""The deployer's behaviour: enrolment, device registry, rollouts, device reports.

``Deployer`` owns the database session factory, the artifact store, the signing key, the
MQTT link and the bus. RPC handlers (``handlers.py``) and MQTT messages call its methods;
``tick`` is the rollout supervisor (notify due targets, time out stalled ones, advance or
stop waves, complete deployments). Several instances may run against one database; the
supervisor's updates are conditional, so a target is notified by one of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import crypto
from schemas.config import Settings
from schemas.deployer import (
    Capabilities,
    CreateDeployment,
    CreateEnrollmentToken,
    DeploymentInfo,
    DeploymentList,
    DeploymentStatus,
    DeploymentStrategy,
    DeviceInfo,
    DeviceList,
    DeviceMqttSettings,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    ListDeployments,
    ListDevices,
    RemoveDevice,
    SetLabels,
    TargetInfo,
    TargetSelector,
    check_x25519_public_key,
)
from schemas.events import (
    DeploymentCompleted,
    DeploymentCreated,
    DeploymentOutcome,
    DeploymentTargetUpdated,
    DeviceEnrolled,
    DeviceOnline,
    DeviceRemoved,
    Event,
    TargetState,
)
from schemas.manifest import Manifest
from schemas.registry import VersionInUse, VersionsInUseReply, VersionsInUseRequest
from schemas.topics import Topics
from schemas.transfer import MAX_STATE_PAYLOAD_BYTES, DeviceState
from services.common.artifacts import ArtifactError, ArtifactStore
from services.common.bus import Bus
from services.common.logging import get_logger
from services.common.mqtt_admin import (
    DynsecAlreadyExistsError,
    DynsecNotFoundError,
    MqttAdmin,
    MqttAdminError,
    device_role_acls,
    device_role_name,
)
from services.deployer import domain, idempotency
from services.deployer.catalog import DEPLOYABLE, Catalog
from services.deployer.chunks import ChunkServer
from services.deployer.errors import (
    DeploymentNotFound,
    DeviceIdTaken,
    DeviceNotFound,
    DeviceRemovalIncomplete,
    DeviceWasRemoved,
    EnrollmentRefused,
    IncompatibleDevices,
    NoTargets,
    NotDeployable,
    WrongDeploymentState,
)
from services.deployer.mqtt import MqttLink, MqttUnavailableError, cancel_and_wait
from services.deployer.store import Deployment, Device, DeviceRemoval, ModelSequence, Target
from services.deployer.store import EnrollmentToken as TokenRow

__all__ = ["Deployer"]

log = get_logger(__name__)

_ACTIVE_STATUSES = (DeploymentStatus.RUNNING.value, DeploymentStatus.PAUSED.value)
#: ``used_by`` of an enrolment token revoked because its device was removed.
_REVOKED = "revoked: device removed"


@dataclass(slots=True)
class _Report:
    """A device's ``state`` (parsed) or ``online`` report, waiting to be applied."""

    device_id: str
    state: DeviceState | None = None
    online: bool = False
    #: Delivered from the broker's store on subscribe (the deployer started or reconnected):
    #: what the device said some time ago, no sign that it is there now.
    retained: bool = False


def _only_progress(old: DeviceState, new: DeviceState) -> bool:
    """``new`` differs from ``old`` only in how far the same deployment step has come."""
    a, b = old.deployment, new.deployment
    return (
        a is not None
        and b is not None
        and a.deployment_id == b.deployment_id
        and a.state == b.state
        and a.error_code == b.error_code
        and a.detail == b.detail
        and old.active == new.active
        and old.previous == new.previous
        and old.rejection == new.rejection
    )


class _WaveReadiness:
    """The devices of a broadcast wave that have not reported on the deployment yet."""

    def __init__(self, deployment_id: str, waiting: set[str]) -> None:
        self.deployment_id = deployment_id
        self.waiting = waiting
        self.ready = asyncio.Event()
        if not waiting:
            self.ready.set()

    def heard_from(self, device_id: str) -> None:
        self.waiting.discard(device_id)
        if not self.waiting:
            self.ready.set()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; every stored one is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stored_key_id(public_key: str | None) -> str | None:
    """The key id of a stored device key; ``None`` for one that is not an X25519 key."""
    try:
        return crypto.key_id(X25519PublicKey.from_public_bytes(base64.b64decode(public_key or "")))
    except ValueError:
        return None


#: Why a target of a device taken out of the fleet is cancelled.
_REMOVED_DETAIL = "device removed from the fleet"


def _cancelled(t: Target, detail: str, now: datetime) -> DeploymentTargetUpdated:
    """Cancel target ``t`` (``detail`` says why); its event."""
    t.state = TargetState.CANCELLED.value
    t.detail = detail
    t.updated_at = now
    return _target_event(t)


@functools.lru_cache(maxsize=4096)
def _key_problem(public_key: str) -> str | None:
    """Why no data key can be sealed to this stored device key, or ``None``.

    Enrolment refuses such keys; rows stored before it did may still hold one. A trial
    exchange costs about 0.1 ms, so the answer is kept per key.
    """
    try:
        check_x25519_public_key(public_key)
    except ValueError as exc:
        return str(exc)
    return None


def _fail_unsealable(t: Target, d: Device, now: datetime) -> DeploymentTargetUpdated | None:
    """Fail target ``t`` when no data key can be sealed to ``d``; its event, else ``None``.

    Sealing would raise on every attempt: the target would stay ``notified`` and its
    deployment ``running`` until cancelled.
    """
    problem = _key_problem(d.public_key or "")
    if problem is None:
        return None
    t.state = TargetState.FAILED.value
    t.detail = (
        f"the device's enrolled key is unusable, no model key can be sealed to it ({problem}); "
        "re-enrol the device with a token made for its id"
    )
    t.updated_at = now
    return _target_event(t)


def _target_event(t: Target) -> DeploymentTargetUpdated:
    return DeploymentTargetUpdated(
        deployment_id=uuid.UUID(t.deployment_id),
        device_id=t.device_id,
        state=TargetState(t.state),
        detail=t.detail,
        bytes_received=t.bytes_received,
    )


class Deployer:
    """One deployer instance."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        store: ArtifactStore,
        signing_key: Ed25519PrivateKey,
        bus: Bus,
        catalog: Catalog,
        admin: MqttAdmin,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.signing_key = signing_key
        self.bus = bus
        self.catalog = catalog
        self.admin = admin
        self.topics = Topics(settings.mqtt.topic_prefix)
        self.link: MqttLink | None = None
        self.chunks: ChunkServer | None = None
        self._broadcasts: set[asyncio.Task[None]] = set()
        #: First supervisor passes of new deployments, run after their creation answers.
        self._first_passes: set[asyncio.Task[None]] = set()
        #: Broadcasts waiting for their wave: deployment id -> devices not yet heard from.
        self._awaiting: list[_WaveReadiness] = []
        self._report_queue: asyncio.Queue[_Report] = asyncio.Queue()
        #: Each device's state report still in the queue (a newer progress report replaces it).
        self._queued_state: dict[str, _Report] = {}
        self._report_worker: asyncio.Task[None] | None = None
        self._republishing: set[asyncio.Task[None]] = set()
        self._allowed: dict[tuple[str, str], float] = {}
        raw = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.platform_public_key = base64.b64encode(raw).decode()
        self.platform_key_id = crypto.key_id(signing_key.public_key())

    # ---- events --------------------------------------------------------------------------

    async def _emit(self, events: Sequence[Event]) -> None:
        for event in events:
            try:
                await self.bus.publish(event)
            except Exception as exc:
                # The DB change is committed: the event must follow. Keep trying with the
                # same event id (the stream stores it once even if an attempt got through).
                log.warning("event not published yet; retrying", subject=event.SUBJECT,
                            error=repr(exc))  # fmt: skip
                self._republish(event)

    def _republish(self, event: Event) -> None:
        async def run() -> None:
            delay = 0.5
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.bus.publish(event)
                except Exception:
                    delay = min(delay * 2, 10.0)
                else:
                    return

        task = asyncio.get_running_loop().create_task(run())
        self._republishing.add(task)
        task.add_done_callback(self._republishing.discard)

    # ---- enrolment -----------------------------------------------------------------------

    async def create_enrollment_token(self, req: CreateEnrollmentToken) -> EnrollmentToken:
        token = secrets.token_urlsafe(32)
        # Operators pass the token as `edge-runtime enroll --token X`: one starting with "-"
        # (1 in 64) would be taken for an option, so draw again.
        while token.startswith("-"):
            token = secrets.token_urlsafe(32)
        ttl = req.ttl_seconds or self.settings.deployer.enrollment_token_ttl
        expires = _now() + timedelta(seconds=ttl)
        async with self.sessions.begin() as s:
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
        async with self.sessions.begin() as s:
            row = await s.get(TokenRow, _hash_token(req.token), with_for_update=True)
            if row is None:
                raise EnrollmentRefused("unknown token")
            if row.used_at is not None:
                if row.used_by == _REVOKED:
                    raise EnrollmentRefused("the token was revoked when its device was removed")
                raise EnrollmentRefused("the token was used already")
            expires_at = _aware(row.expires_at)
            if expires_at is not None and expires_at <= _now():
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
                previous = (_aware(device.enrolled_at), _stored_key_id(device.public_key))
                # The broker drops the old session with the old password (no will).
                was_online, device.online = bool(device.online), False
            device.group = row.group
            device.labels = dict(row.labels or {})
            device.public_key = req.public_key
            device.capabilities = req.capabilities.model_dump(mode="json")
            device.mqtt_username = req.device_id
            device.enrolled_at = _now()
            row.used_at = _now()
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
        await self._emit([enrolled])
        if previous is not None:
            await self._mark_kicked(req.device_id, was_online)
        cfg = self.settings
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
        prefix = self.settings.mqtt.topic_prefix
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

    # ---- devices -------------------------------------------------------------------------

    def _device_info(self, d: Device, removal: DeviceRemoval | None = None) -> DeviceInfo:
        return DeviceInfo(
            device_id=d.device_id,
            group=d.group,
            labels=dict(d.labels or {}),
            capabilities=Capabilities.model_validate(d.capabilities or {"onnxruntime_version": ""}),
            online=bool(d.online) and removal is None,
            last_seen=_aware(d.last_seen),
            enrolled_at=_aware(d.enrolled_at) or _now(),
            active_model=d.active_model,
            active_version=d.active_version,
            previous_model=d.previous_model,
            previous_version=d.previous_version,
            last_rejection=d.last_rejection,
            removed_at=_aware(removal.removed_at) if removal is not None else None,
            removed_by=removal.removed_by if removal is not None else None,
            removal_reason=removal.reason if removal is not None else None,
        )

    async def list_devices(self, req: ListDevices) -> DeviceList:
        async with self.sessions() as s:
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
            out.append(self._device_info(d, removed.get(d.device_id)))
        return DeviceList(devices=tuple(out))

    async def get_device(self, device_id: str) -> DeviceInfo:
        """One device; a removed one too (with ``removed_at``), as history."""
        async with self.sessions() as s:
            d = await s.get(Device, device_id)
            if d is None:
                raise DeviceNotFound(device_id)
            return self._device_info(d, await s.get(DeviceRemoval, device_id))

    async def set_labels(self, req: SetLabels) -> DeviceInfo:
        async with self.sessions.begin() as s:
            d = await s.get(Device, req.device_id)
            if d is None:
                raise DeviceNotFound(req.device_id)
            if await s.get(DeviceRemoval, req.device_id) is not None:
                raise DeviceWasRemoved(req.device_id, "change its labels")
            d.labels = dict(req.labels)
            if req.group is not None:
                d.group = req.group or None
            return self._device_info(d)

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
        async with self.sessions.begin() as s:
            d = await s.get(Device, device_id, with_for_update=True)
            if d is None:
                raise DeviceNotFound(device_id)
            removal = await s.get(DeviceRemoval, device_id)
            if removal is None:
                now = _now()
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
                    .values(used_at=now, used_by=_REVOKED)
                )
                unfinished = (
                    await s.scalars(
                        select(Target).where(
                            Target.device_id == device_id,
                            Target.state.not_in([st.value for st in TargetState if st.terminal]),
                        )
                    )
                ).all()
                events += [_cancelled(t, _REMOVED_DETAIL, now) for t in unfinished]
                affected = {t.deployment_id for t in unfinished}
                log.info("device removed", device=device_id, by=req.removed_by,
                         cancelled_targets=len(unfinished))  # fmt: skip
            info = self._device_info(d, removal)
            removed = DeviceRemoved(
                event_id=uuid.UUID(removal.event_id),
                occurred_at=_aware(removal.removed_at) or _now(),
                device_id=device_id,
                removed_by=removal.removed_by,
                reason=removal.reason,
            )
        for key in [k for k in self._allowed if k[0] == device_id]:
            self._allowed.pop(key, None)
        for wave in self._awaiting:
            wave.heard_from(device_id)  # a broadcast does not wait for it
        await self._emit(events)
        await self._revoke_broker_access(device_id)
        await self._clear_retained(device_id)
        await self._emit([removed])
        # A deployment that waited only for this device completes, on a pass of its own.
        for deployment_id in affected:
            self._supervise_soon(deployment_id)
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
            self.topics.desired(device_id),
            self.topics.state(device_id),
            self.topics.online(device_id),
        )
        if self.link is None:
            raise DeviceRemovalIncomplete(device_id, "clearing its retained topics", "no link")
        try:
            for topic in topics:
                await self.link.publish(topic, b"", qos=1, retain=True)
        except (MqttUnavailableError, aiomqtt.MqttError) as exc:
            raise DeviceRemovalIncomplete(
                device_id, "clearing its retained topics", str(exc)
            ) from None

    async def _live_device(self, s: AsyncSession, device_id: str) -> Device | None:
        """The device, unless it is unknown or was removed (its reports are ignored)."""
        found = await s.scalar(
            select(Device)
            .outerjoin(DeviceRemoval, DeviceRemoval.device_id == Device.device_id)
            .where(Device.device_id == device_id, DeviceRemoval.device_id.is_(None))
        )
        return found

    # ---- deployments ---------------------------------------------------------------------

    async def _select(self, s: AsyncSession, target: TargetSelector) -> list[Device]:
        rows = list(
            (
                await s.scalars(
                    select(Device)
                    .where(Device.device_id.not_in(select(DeviceRemoval.device_id)))
                    .order_by(Device.device_id)
                )
            ).all()
        )
        if target.device_id is not None:
            return [d for d in rows if d.device_id == target.device_id]
        if target.group is not None:
            return [d for d in rows if d.group == target.group]
        wanted = target.labels or {}
        return [d for d in rows if all((d.labels or {}).get(k) == v for k, v in wanted.items())]

    async def _next_sequence(self, s: AsyncSession, model: str) -> int:
        row = await s.get(ModelSequence, model, with_for_update=True)
        if row is None:
            row = ModelSequence(model=model, last=0)
            s.add(row)
        row.last += 1
        return row.last

    async def create_deployment(self, req: CreateDeployment) -> DeploymentInfo:
        """Start a deployment; with ``request_id``, a repeat answers the one it started
        (a ``KeyedDeploymentInfo``, see ``idempotency.py``)."""
        fields = req.model_dump(mode="json", exclude={"request_id"})
        key = idempotency.Key.of("create", req.request_id, fields)
        if key is None:
            return await self._create_deployment(req, None)
        return await idempotency.run_once(
            self.sessions, key, lambda k: self._create_deployment(req, k), self.get_deployment
        )

    async def _create_deployment(
        self, req: CreateDeployment, key: idempotency.Key | None
    ) -> DeploymentInfo:
        version = await self.catalog.resolve(req.model, req.version)
        if version.status not in DEPLOYABLE:
            raise NotDeployable(version.model, version.version, version.status)
        try:
            self.store.info(version.artifact_id)
        except ArtifactError as exc:
            raise NotDeployable(
                version.model, version.version, f"not deliverable ({exc})"
            ) from None
        deployment_id = str(uuid.uuid4())
        timeout = req.device_timeout or self.settings.deployment.default_device_timeout
        async with self.sessions.begin() as s:
            if key is not None:  # first: a concurrent attempt with the key waits here
                await idempotency.claim(s, key, deployment_id)
            devices = await self._select(s, req.target)
            if not devices:
                raise NoTargets(_describe(req.target))
            problems: dict[str, str] = {}
            for d in devices:
                caps = Capabilities.model_validate(d.capabilities or {"onnxruntime_version": ""})
                problem = domain.preflight(caps, version.requirements)
                if problem is not None:
                    problems[d.device_id] = problem
            if problems and not req.skip_incompatible:
                raise IncompatibleDevices(problems)
            devices = [d for d in devices if d.device_id not in problems]
            if not devices:
                raise IncompatibleDevices(problems)
            ids = [d.device_id for d in devices]
            if req.strategy is DeploymentStrategy.WAVES:
                cumulative = domain.plan_waves(len(ids), req.waves)
            else:
                cumulative = [len(ids)]
            waves = domain.assign_waves(ids, cumulative)
            sequence = await self._next_sequence(s, version.model)
            s.add(
                Deployment(
                    deployment_id=deployment_id,
                    kind="deploy",
                    model=version.model,
                    version=version.version,
                    artifact_id=version.artifact_id,
                    strategy=req.strategy.value,
                    waves=cumulative,
                    current_wave=0,
                    success_threshold=req.success_threshold,
                    error_threshold=req.error_threshold,
                    auto_rollback=req.auto_rollback,
                    device_timeout=timeout,
                    status=DeploymentStatus.RUNNING.value,
                    created_by=req.created_by,
                )
            )
            await s.flush()
            for device_id in ids:
                s.add(
                    Target(
                        deployment_id=deployment_id,
                        device_id=device_id,
                        wave=waves[device_id],
                        model=version.model,
                        version=version.version,
                        artifact_id=version.artifact_id,
                        sequence=sequence,
                        state=TargetState.PENDING.value,
                    )
                )
        await self._emit(
            [
                DeploymentCreated(
                    model=version.model,
                    version=version.version,
                    deployment_id=uuid.UUID(deployment_id),
                    target_count=len(ids),
                    strategy=req.strategy.value,
                    created_by=req.created_by,
                )
            ]
        )
        # The first pass (manifests to the first wave, events, a broadcast) runs after the
        # answer: for a fleet it takes seconds, longer than a caller's request timeout.
        self._supervise_soon(deployment_id)
        return await self.get_deployment(deployment_id)

    def _supervise_soon(self, deployment_id: str) -> None:
        async def run() -> None:
            try:
                await self._supervise(deployment_id)
            except Exception:
                # The supervisor's next tick tries again.
                log.exception("supervising a deployment failed", deployment=deployment_id)

        task = asyncio.get_running_loop().create_task(run())
        self._first_passes.add(task)
        task.add_done_callback(self._first_passes.discard)

    async def _deployment_info(
        self, s: AsyncSession, dep: Deployment, *, with_targets: bool = True
    ) -> DeploymentInfo:
        targets = (
            await s.scalars(
                select(Target)
                .where(Target.deployment_id == dep.deployment_id)
                .order_by(Target.wave, Target.device_id)
            )
        ).all()
        counts = domain.count_states(TargetState(t.state) for t in targets)
        return DeploymentInfo(
            deployment_id=dep.deployment_id,
            model=dep.model,
            version=dep.version,
            artifact_id=dep.artifact_id,
            kind="rollback" if dep.kind == "rollback" else "deploy",
            rollback_of=dep.rollback_of,
            strategy=DeploymentStrategy(dep.strategy),
            waves=tuple(int(w) for w in dep.waves),
            current_wave=dep.current_wave,
            success_threshold=dep.success_threshold,
            error_threshold=dep.error_threshold,
            auto_rollback=dep.auto_rollback,
            status=DeploymentStatus(dep.status),
            outcome=DeploymentOutcome(dep.outcome) if dep.outcome else None,
            reason=dep.reason,
            created_at=_aware(dep.created_at) or _now(),
            updated_at=_aware(dep.updated_at) or _now(),
            created_by=dep.created_by,
            counts=counts,
            targets=tuple(
                TargetInfo(
                    device_id=t.device_id,
                    wave=t.wave,
                    state=TargetState(t.state),
                    model=t.model,
                    version=t.version,
                    detail=t.detail,
                    chunks_received=t.chunks_received,
                    chunk_count=t.chunk_count,
                    bytes_received=t.bytes_received,
                    attempts=t.attempts,
                    updated_at=_aware(t.updated_at) or _now(),
                )
                for t in targets
            )
            if with_targets
            else (),
        )

    async def get_deployment(self, deployment_id: str) -> DeploymentInfo:
        async with self.sessions() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            return await self._deployment_info(s, dep)

    async def list_deployments(self, req: ListDeployments) -> DeploymentList:
        async with self.sessions() as s:
            query = select(Deployment).order_by(Deployment.created_at.desc()).limit(req.limit)
            if req.model is not None:
                query = query.where(Deployment.model == req.model)
            if req.status is not None:
                query = query.where(Deployment.status == req.status.value)
            if req.device_id is not None:
                query = query.where(
                    Deployment.deployment_id.in_(
                        select(Target.deployment_id).where(Target.device_id == req.device_id)
                    )
                )
            rows = (await s.scalars(query)).all()
            items = [await self._deployment_info(s, d, with_targets=False) for d in rows]
        return DeploymentList(deployments=tuple(items))

    async def pause(self, deployment_id: str) -> DeploymentInfo:
        await self._set_status(deployment_id, DeploymentStatus.RUNNING, DeploymentStatus.PAUSED)
        return await self.get_deployment(deployment_id)

    async def resume(self, deployment_id: str) -> DeploymentInfo:
        await self._set_status(deployment_id, DeploymentStatus.PAUSED, DeploymentStatus.RUNNING)
        await self.tick()
        return await self.get_deployment(deployment_id)

    async def _set_status(
        self, deployment_id: str, old: DeploymentStatus, new: DeploymentStatus
    ) -> None:
        async with self.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            if dep.status != old.value:
                action = "pause" if new is DeploymentStatus.PAUSED else "resume"
                raise WrongDeploymentState(deployment_id, dep.status, action)
            dep.status = new.value
            dep.updated_at = _now()

    async def cancel(self, deployment_id: str) -> DeploymentInfo:
        async with self.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            if dep.status not in _ACTIVE_STATUSES:
                raise WrongDeploymentState(deployment_id, dep.status, "cancel")
            events = await self._finish(s, dep, DeploymentOutcome.CANCELLED, "cancelled by user")
        await self._emit(events)
        return await self.get_deployment(deployment_id)

    async def rollback(self, deployment_id: str, request_id: str | None = None) -> DeploymentInfo:
        """Roll back; with ``request_id``, a repeat answers the rollback it started."""
        key = idempotency.Key.of("rollback", request_id, {"deployment_id": deployment_id})
        if key is None:
            return await self._rollback(deployment_id, None)
        return await idempotency.run_once(
            self.sessions, key, lambda k: self._rollback(deployment_id, k), self.get_deployment
        )

    async def _rollback(self, deployment_id: str, key: idempotency.Key | None) -> DeploymentInfo:
        async with self.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            events: list[Event] = []
            if dep.status in _ACTIVE_STATUSES:
                events += await self._finish(s, dep, DeploymentOutcome.ROLLED_BACK, "rollback")
            rollback_id, more = await self._create_rollback(s, dep)
            if key is not None and rollback_id is not None:
                await idempotency.claim(s, key, rollback_id)
        await self._emit([*events, *more])
        if rollback_id is None:
            raise WrongDeploymentState(deployment_id, "without devices to roll back", "roll back")
        await self.tick()
        return await self.get_deployment(rollback_id)

    async def _create_rollback(
        self, s: AsyncSession, dep: Deployment
    ) -> tuple[str | None, list[Event]]:
        """A rollback deployment for the devices ``dep`` changed that have a previous model."""
        targets = (
            await s.scalars(
                select(Target).where(
                    Target.deployment_id == dep.deployment_id,
                    Target.state == TargetState.ACTIVE.value,
                )
            )
        ).all()
        plan: list[tuple[Device, str, str, str]] = []
        for t in targets:
            d = await s.get(Device, t.device_id)
            if (
                d is not None
                and d.active_artifact == t.artifact_id
                and d.previous_artifact
                and d.previous_model
                and d.previous_version
            ):
                plan.append((d, d.previous_model, d.previous_version, d.previous_artifact))
        if not plan:
            return None, []
        rollback_id = str(uuid.uuid4())
        s.add(
            Deployment(
                deployment_id=rollback_id,
                kind="rollback",
                rollback_of=dep.deployment_id,
                model=plan[0][1],
                version=plan[0][2],
                artifact_id=plan[0][3],
                strategy=DeploymentStrategy.ALL_AT_ONCE.value,
                waves=[len(plan)],
                current_wave=0,
                success_threshold=0.0,
                error_threshold=1.0,
                auto_rollback=False,
                device_timeout=dep.device_timeout,
                status=DeploymentStatus.RUNNING.value,
                created_by="rollback",
            )
        )
        await s.flush()
        for d, model, version, artifact in plan:
            s.add(
                Target(
                    deployment_id=rollback_id,
                    device_id=d.device_id,
                    wave=0,
                    model=model,
                    version=version,
                    artifact_id=artifact,
                    sequence=await self._next_sequence(s, model),
                    rollback=True,
                    state=TargetState.PENDING.value,
                )
            )
        event = DeploymentCreated(
            model=plan[0][1],
            version=plan[0][2],
            deployment_id=uuid.UUID(rollback_id),
            target_count=len(plan),
            strategy="rollback",
            created_by="rollback",
        )
        return rollback_id, [event]

    # ---- manifests -------------------------------------------------------------------------

    def _manifest(self, t: Target, d: Device) -> Manifest:
        info = self.store.info(t.artifact_id)
        now = int(time.time())
        fields: dict[str, Any] = {
            "device_id": t.device_id,
            "deployment_id": t.deployment_id,
            "model": t.model,
            "version": t.version,
            "sequence": t.sequence,
            "rollback": t.rollback,
            "issued_at": now,
            "expires_at": now + self.settings.deployment.manifest_ttl,
            "artifact_id": t.artifact_id,
            "size": info.size,
            "chunk_size": info.chunk_size,
            "chunk_count": info.chunk_count,
            "encrypted": info.encrypted,
            "broadcast": t.broadcast,
        }
        if info.encrypted:
            sealed = crypto.seal_dek(
                self.store.dek(info),
                base64.b64decode(d.public_key),
                device_id=t.device_id,
                artifact_id=t.artifact_id,
            )
            fields["nonce_prefix"] = base64.b64encode(info.nonce_prefix).decode()
            fields["sealed_key"] = base64.b64encode(sealed).decode()
        return Manifest.model_validate(fields)

    async def _publish_manifest(self, t: Target, d: Device) -> Manifest:
        manifest = self._manifest(t, d)
        assert self.link is not None
        await self.link.publish(
            self.topics.desired(t.device_id),
            manifest.sign(self.signing_key).to_bytes(),
            qos=1,
            retain=True,
        )
        self._allowed[(t.device_id, t.artifact_id)] = time.monotonic()
        return manifest

    async def authorize_chunks(self, device_id: str, artifact_id: str) -> bool:
        """Chunks go only to devices with an unfinished target for the artifact."""
        if (device_id, artifact_id) in self._allowed:
            return True
        async with self.sessions() as s:
            found = await s.scalar(
                select(Target.device_id).where(
                    Target.device_id == device_id,
                    Target.artifact_id == artifact_id,
                    Target.state.not_in([st.value for st in TargetState if st.terminal]),
                )
            )
        if found is not None:
            self._allowed[(device_id, artifact_id)] = time.monotonic()
        return found is not None

    # ---- device reports ----------------------------------------------------------------

    async def on_mqtt_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            parsed = self.topics.parse(topic)
        except ValueError:
            return
        kind = parsed.kind.value
        if kind == "artifact_get" and self.chunks is not None:
            self.chunks.handle(topic, bytes(payload), message.properties)
        elif kind in ("state", "online"):
            # Reports are applied in order by one worker, so a report's database work never
            # holds up the chunk requests behind it on the subscription.
            if self._report_worker is None or self._report_worker.done():
                self._report_worker = asyncio.get_running_loop().create_task(self._apply_reports())
            device_id = parsed.ident
            # Live messages reach a subscriber with the retain flag clear (the deployer does
            # not ask for retain-as-published): a set flag marks a stored one.
            retained = bool(message.retain)
            if kind == "online":
                self._queued_state.pop(device_id, None)  # later reports queue behind it
                self._report_queue.put_nowait(
                    _Report(device_id, online=bytes(payload) == b"1", retained=retained)
                )
                return
            state = self._parse_state(device_id, bytes(payload))
            if state is None:
                return
            self._heard_from(device_id, state)  # a waiting broadcast need not wait for the db
            queued = self._queued_state.get(device_id)
            if (
                queued is not None
                and queued.state is not None
                and _only_progress(queued.state, state)
            ):
                # Still waiting: the newer progress of the same step takes its place (at
                # 100 devices, two progress reports a second each outrun the database).
                queued.state = state
                queued.retained = retained
                return
            report = _Report(device_id, state=state, retained=retained)
            self._queued_state[device_id] = report
            self._report_queue.put_nowait(report)

    async def _apply_reports(self) -> None:
        while True:
            report = await self._report_queue.get()
            device_id = report.device_id
            if self._queued_state.get(device_id) is report:
                del self._queued_state[device_id]
            try:
                if report.state is not None:
                    await self._apply_state(device_id, report.state, retained=report.retained)
                else:
                    await self.on_online(device_id, report.online, retained=report.retained)
            except Exception:  # a bad report never stops the others
                log.exception("device report not applied", device=device_id)

    def _parse_state(self, device_id: str, payload: bytes) -> DeviceState | None:
        if not payload or len(payload) > MAX_STATE_PAYLOAD_BYTES:
            return None
        try:
            state = DeviceState.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("device state refused", device=device_id, error=str(exc)[:200])
            return None
        if state.device_id != device_id:
            log.warning("device state names another device", device=device_id)
            return None
        return state

    async def _apply_state(
        self, device_id: str, state: DeviceState, *, retained: bool = False
    ) -> None:
        """Record a device's report. A live one is a sign of life (``last_seen``, online);
        a ``retained`` one, delivered on subscribe, tells only what the device last said."""
        events: list[Event] = []
        async with self.sessions.begin() as s:
            d = await self._live_device(s, device_id)
            if d is None:
                return
            if not retained:
                d.last_seen = _now()
                d.online = True
            if state.active is not None:
                d.active_model = state.active.model
                d.active_version = state.active.version
                d.active_artifact = state.active.artifact_id
                d.active_sequence = state.active.sequence
            if state.previous is not None:
                d.previous_model = state.previous.model
                d.previous_version = state.previous.version
                d.previous_artifact = state.previous.artifact_id
            if state.rejection is not None:
                r = state.rejection
                d.last_rejection = f"{r.code.value}: {r.detail}"
            p = state.deployment
            if p is not None:
                t = await s.get(Target, (p.deployment_id, device_id))
                if t is not None:
                    events += await self._apply_progress(s, t, p.state, p)
        await self._emit(events)

    async def _apply_progress(
        self, s: AsyncSession, t: Target, new: TargetState, p: Any
    ) -> list[Event]:
        old = TargetState(t.state)
        now = _now()
        moved = p.chunks_received > t.chunks_received
        if moved:
            t.chunks_received = p.chunks_received
            t.chunk_count = p.chunk_count
            t.bytes_received = p.bytes_received
            t.last_progress_at = now
        if not domain.advances(old, new):
            return []
        t.state = new.value
        t.detail = p.detail or (f"{p.error_code.value}" if p.error_code else "")
        t.updated_at = now
        t.last_progress_at = now
        events: list[Event] = [
            DeploymentTargetUpdated(
                deployment_id=uuid.UUID(t.deployment_id),
                device_id=t.device_id,
                state=new,
                detail=t.detail,
                bytes_received=t.bytes_received,
            )
        ]
        if t.rollback and new is TargetState.ACTIVE:
            dep = await s.get(Deployment, t.deployment_id)
            if dep is not None and dep.rollback_of:
                original = await s.get(Target, (dep.rollback_of, t.device_id))
                if original is not None and original.state == TargetState.ACTIVE.value:
                    original.state = TargetState.ROLLED_BACK.value
                    original.detail = f"rolled back by deployment {dep.deployment_id}"
                    original.updated_at = now
        return events

    async def on_online(self, device_id: str, online: bool, *, retained: bool = False) -> None:
        """A device's ``online`` flag: ``1`` when it connects, ``0`` when it stops (its
        goodbye), loses the connection (its will) or is kicked by the platform.

        ``last_seen`` moves when the device is heard now: a live ``1``, or a live ``0``
        while it was online (it was there until now). A ``0`` for a device already offline
        is the platform's own (see ``_mark_kicked``); a ``retained`` flag, delivered on
        subscribe, is what the device said when it was last heard, no sign of life.
        """
        due: list[tuple[Target, Device]] = []
        changed = False
        async with self.sessions.begin() as s:
            d = await self._live_device(s, device_id)
            if d is None:
                return
            changed = bool(d.online) != online
            if not retained and (online or d.online):
                d.last_seen = _now()
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
                            Deployment.status.in_(_ACTIVE_STATUSES),
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
                    t.last_progress_at = _now()
        for t, dev in due:
            try:
                await self._publish_manifest(t, dev)
            except (MqttUnavailableError, aiomqtt.MqttError, ArtifactError) as exc:
                log.warning("manifest not re-issued", device=device_id, error=str(exc))
        if changed:
            await self._emit([DeviceOnline(device_id=device_id, online=online)])

    async def _mark_kicked(self, device_id: str, was_online: bool) -> None:
        """The platform replaced the device's broker credentials (the broker drops it and
        sends no will): make the retained ``online`` say so, and tell listeners. The
        database row was set offline in the same transaction as the new credentials."""
        if self.link is not None:
            try:
                await self.link.publish(self.topics.online(device_id), b"0", qos=1, retain=True)
            except (MqttUnavailableError, aiomqtt.MqttError) as exc:
                log.warning("retained online flag not reset", device=device_id, error=str(exc))
        if was_online:
            await self._emit([DeviceOnline(device_id=device_id, online=False)])

    # ---- supervisor --------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over unfinished deployments."""
        async with self.sessions() as s:
            ids = (
                await s.scalars(
                    select(Deployment.deployment_id).where(Deployment.status.in_(_ACTIVE_STATUSES))
                )
            ).all()
        for deployment_id in ids:
            try:
                await self._supervise(deployment_id)
            except Exception:
                log.exception("supervising a deployment failed", deployment=deployment_id)

    async def _supervise(self, deployment_id: str) -> None:
        cfg = self.settings.deployer
        events: list[Event] = []
        to_notify: list[tuple[Target, Device]] = []
        async with self.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None or dep.status not in _ACTIVE_STATUSES:
                return
            targets = list(
                (await s.scalars(select(Target).where(Target.deployment_id == deployment_id))).all()
            )
            now = _now()
            # Stalled targets: notify again with back-off, then time out.
            for t in targets:
                state = TargetState(t.state)
                if state.terminal or state is TargetState.PENDING:
                    continue
                since = _aware(t.last_progress_at) or _aware(t.notified_at) or now
                allowed = dep.device_timeout * (2**t.attempts)
                if (now - since).total_seconds() <= allowed:
                    continue
                if t.attempts < cfg.max_retries:
                    t.attempts += 1
                    t.last_progress_at = now
                    d = await s.get(Device, t.device_id)
                    if d is not None and (unsealable := _fail_unsealable(t, d, now)) is not None:
                        events.append(unsealable)  # notified before keys were checked at enrolment
                    elif d is not None:
                        to_notify.append((t, d))
                else:
                    t.state = TargetState.TIMED_OUT.value
                    t.detail = f"no progress for {allowed:g} s after {t.attempts} retries"
                    t.updated_at = now
                    events.append(_target_event(t))
            # Waves.
            last_wave = len(dep.waves) - 1
            while True:
                wave = [TargetState(t.state) for t in targets if t.wave == dep.current_wave]
                verdict = domain.evaluate_wave(
                    wave,
                    success_threshold=dep.success_threshold,
                    error_threshold=dep.error_threshold,
                )
                if verdict is domain.WaveVerdict.STOP and dep.kind != "rollback":
                    failed = sum(st in domain.FAILED_STATES for st in wave)
                    reason = (
                        f"wave {dep.current_wave + 1}: {failed} of {len(wave)} failed "
                        f"(error threshold {dep.error_threshold:g})"
                    )
                    events += await self._finish(s, dep, DeploymentOutcome.STOPPED, reason)
                    break
                if (
                    verdict is domain.WaveVerdict.ADVANCE
                    and dep.current_wave < last_wave
                    and dep.status == DeploymentStatus.RUNNING.value
                ):
                    dep.current_wave += 1
                    dep.updated_at = now
                    continue
                break
            if dep.status == DeploymentStatus.RUNNING.value:
                due = [
                    t
                    for t in targets
                    if t.state == TargetState.PENDING.value and t.wave <= dep.current_wave
                ]
                live: list[tuple[Target, Device]] = []
                for t in due:
                    d = await self._live_device(s, t.device_id)
                    if d is None:  # removed while its deployment was being created
                        events.append(_cancelled(t, _REMOVED_DETAIL, now))
                    elif (unsealable := _fail_unsealable(t, d, now)) is not None:
                        events.append(unsealable)  # the wave's thresholds count it on the next pass
                    else:
                        live.append((t, d))
                # A removed device would never report: the broadcast waits only for the rest.
                broadcast = len(live) >= cfg.broadcast_min_targets
                for t, d in live:
                    t.state = TargetState.NOTIFIED.value
                    t.notified_at = now
                    t.last_progress_at = now
                    t.updated_at = now
                    t.broadcast = broadcast
                    to_notify.append((t, d))
                    events.append(_target_event(t))
                if broadcast:
                    self._schedule_broadcast(
                        live[0][0].artifact_id, deployment_id, {t.device_id for t, _ in live}
                    )
            if dep.status in _ACTIVE_STATUSES and all(
                TargetState(t.state).terminal for t in targets
            ):
                outcome = domain.final_outcome(TargetState(t.state) for t in targets)
                events += await self._finish(s, dep, outcome, "")
        # The events first: a device answers its manifest within milliseconds, and its
        # target's 'notified' must not reach the bus after the states the device reports.
        await self._emit(events)
        # All at once: each publish waits for its PUBACK, and a wave's devices should get
        # their manifests together (a broadcast waits for the last of them).
        await asyncio.gather(*(self._notify(t, d) for t, d in to_notify))

    async def _notify(self, t: Target, d: Device) -> None:
        try:
            await self._publish_manifest(t, d)
        except (MqttUnavailableError, aiomqtt.MqttError, ArtifactError) as exc:
            # The supervisor notifies again when the target's timeout passes.
            log.warning("manifest not published", device=t.device_id, error=str(exc))

    async def _finish(
        self, s: AsyncSession, dep: Deployment, outcome: DeploymentOutcome, reason: str
    ) -> list[Event]:
        events: list[Event] = []
        now = _now()
        targets = (
            await s.scalars(select(Target).where(Target.deployment_id == dep.deployment_id))
        ).all()
        if outcome in (DeploymentOutcome.STOPPED, DeploymentOutcome.CANCELLED):
            for t in targets:
                if t.state == TargetState.PENDING.value or (
                    outcome is DeploymentOutcome.CANCELLED and not TargetState(t.state).terminal
                ):
                    events.append(_cancelled(t, reason, now))
        dep.status = DeploymentStatus.COMPLETED.value
        dep.outcome = outcome.value
        dep.reason = reason
        dep.updated_at = now
        await s.execute(
            update(Deployment)
            .where(Deployment.deployment_id == dep.deployment_id)
            .values(status=dep.status, outcome=dep.outcome, reason=reason, updated_at=now)
        )
        if outcome is DeploymentOutcome.STOPPED and dep.auto_rollback:
            _, more = await self._create_rollback(s, dep)
            events += more
        events.append(
            DeploymentCompleted(
                deployment_id=uuid.UUID(dep.deployment_id),
                outcome=outcome,
                counts=domain.count_states(TargetState(t.state) for t in targets),
            )
        )
        log.info("deployment completed", deployment=dep.deployment_id, outcome=outcome.value)
        return events

    def _schedule_broadcast(self, artifact_id: str, deployment_id: str, devices: set[str]) -> None:
        """Broadcast ``artifact_id`` once the wave's devices can hear it.

        A device reports on the deployment only after it has subscribed to the broadcast
        topic, so the broadcast starts when every device of the wave has reported (or
        refused the manifest), or after ``stall_timeout`` at the latest; a device that
        misses chunks of it pulls them.
        """
        wave = _WaveReadiness(deployment_id, set(devices))
        self._awaiting.append(wave)

        async def run() -> None:
            try:
                async with asyncio.timeout(self.settings.deployer.stall_timeout):
                    await wave.ready.wait()
            except TimeoutError:
                log.info(
                    "broadcast starts before every device is ready",
                    artifact=artifact_id,
                    waiting=len(wave.waiting),
                )
            finally:
                self._awaiting.remove(wave)
            if self.chunks is not None:
                try:
                    await self.chunks.broadcast(artifact_id)
                except Exception as exc:
                    log.warning("broadcast failed", artifact=artifact_id, error=repr(exc))

        task = asyncio.get_running_loop().create_task(run())
        self._broadcasts.add(task)
        task.add_done_callback(self._broadcasts.discard)

    def _heard_from(self, device_id: str, state: DeviceState) -> None:
        """A report on a deployment (or a refusal of it): the device is past its manifest."""
        named = {x.deployment_id for x in (state.deployment, state.rejection) if x is not None}
        for wave in self._awaiting:
            if wave.deployment_id in named:
                wave.heard_from(device_id)

    async def close(self) -> None:
        if self._republishing:
            log.error("stopping with events not yet published", count=len(self._republishing))
        worker = [self._report_worker] if self._report_worker is not None else []
        # They wait in publishes, which may absorb a cancellation: see cancel_and_wait.
        await cancel_and_wait(
            [*self._first_passes, *self._broadcasts, *self._republishing, *worker]
        )

    # ---- retention -----------------------------------------------------------------------

    async def versions_in_use(self, req: VersionsInUseRequest) -> VersionsInUseReply:
        found: dict[tuple[str, str], str] = {}
        async with self.sessions() as s:
            live = select(Device).where(Device.device_id.not_in(select(DeviceRemoval.device_id)))
            for d in (await s.scalars(live)).all():
                if d.active_model and d.active_version:
                    found.setdefault((d.active_model, d.active_version), "active")
                if d.previous_model and d.previous_version:
                    found.setdefault((d.previous_model, d.previous_version), "rollback_target")
            rows = await s.execute(
                select(Target.model, Target.version)
                .join(Deployment, Deployment.deployment_id == Target.deployment_id)
                .where(Deployment.status.in_(_ACTIVE_STATUSES))
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


def _describe(target: TargetSelector) -> str:
    if target.device_id is not None:
        return f"device {target.device_id!r}"
    if target.group is not None:
        return f"group {target.group!r}"
    return f"labels {target.labels!r}"
