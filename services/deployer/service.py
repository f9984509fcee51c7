"""The deployer's use cases, one object over its parts.

``Deployer`` composes enrolment (``enrolment.py``), the device registry with presence and
removal (``devices.py``), rollouts (``rollouts.py``, ``rollbacks.py``), the supervisor
(``supervisor.py``), device reports (``reports.py``) and manifests (``manifests.py``), which
share one ``DeployerContext``. RPC handlers, commands and MQTT messages call it; ``tick`` is
one supervisor pass.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.config import Settings
from schemas.deployer import (
    CreateDeployment,
    CreateEnrollmentToken,
    DeploymentInfo,
    DeploymentList,
    DeviceInfo,
    DeviceList,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    KeyedDeploymentInfo,
    ListDeployments,
    ListDevices,
    RemoveDevice,
    SetLabels,
)
from schemas.keychain import RotationStatement
from schemas.registry import VersionsInUseReply, VersionsInUseRequest
from schemas.topics import Topics
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.logging import get_logger
from services.common.mqtt_admin import MqttAdmin
from services.deployer.catalog import Catalog
from services.deployer.chunks import ChunkServer
from services.deployer.context import DeployerContext, Events
from services.deployer.devices import Devices
from services.deployer.enrolment import Enrolment
from services.deployer.manifests import ChunkGrants, Manifests
from services.deployer.mqtt import MqttLink, cancel_and_wait
from services.deployer.reports import Reports
from services.deployer.rollouts import Rollouts
from services.deployer.supervisor import Supervisor

__all__ = ["Deployer"]

log = get_logger(__name__)


class Deployer:
    """One deployer instance. Several may run against one database."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        store: ArtifactStore,
        signing_key: Ed25519PrivateKey,
        key_chain: tuple[RotationStatement, ...] = (),
        bus: Bus,
        catalog: Catalog,
        admin: MqttAdmin,
        link: MqttLink,
        chunks: ChunkServer,
        grants: ChunkGrants,
    ) -> None:
        """``chunks`` asks ``grants.authorize`` whether a device may fetch an artifact."""
        self.events = Events(bus)
        self.context = ctx = DeployerContext(
            settings=settings,
            sessions=sessions,
            topics=Topics(settings.mqtt.topic_prefix),
            link=link,
            events=self.events,
        )
        self.sessions = sessions
        self.admin = admin
        self.manifests = Manifests(
            ctx, store=store, signing_key=signing_key, key_chain=key_chain, grants=grants
        )
        self.supervisor = Supervisor(ctx, manifests=self.manifests, chunks=chunks)
        self.devices = Devices(
            ctx, admin=admin, manifests=self.manifests, grants=grants, supervisor=self.supervisor
        )
        self.reports = Reports(ctx, devices=self.devices, supervisor=self.supervisor, chunks=chunks)
        self.enrolment = Enrolment(
            ctx, admin=admin, platform_key=signing_key.public_key(), devices=self.devices
        )
        self.rollouts = Rollouts(ctx, store=store, catalog=catalog, supervisor=self.supervisor)
        #: Where ``MqttLink.start`` sends the subscriptions' messages.
        self.on_mqtt_message = self.reports.on_mqtt_message

    # ---- enrolment -----------------------------------------------------------------------

    async def create_enrollment_token(self, req: CreateEnrollmentToken) -> EnrollmentToken:
        return await self.enrolment.create_token(req)

    async def enroll(self, req: EnrollRequest) -> EnrollReply:
        return await self.enrolment.enroll(req)

    # ---- devices -------------------------------------------------------------------------

    async def list_devices(self, req: ListDevices) -> DeviceList:
        return await self.devices.list_devices(req)

    async def get_device(self, device_id: str) -> DeviceInfo:
        return await self.devices.get_device(device_id)

    async def set_labels(self, req: SetLabels) -> DeviceInfo:
        return await self.devices.set_labels(req)

    async def remove_device(self, req: RemoveDevice) -> DeviceInfo:
        return await self.devices.remove_device(req)

    async def versions_in_use(self, req: VersionsInUseRequest) -> VersionsInUseReply:
        return await self.devices.versions_in_use(req)

    # ---- rollouts ------------------------------------------------------------------------

    async def create_deployment(self, req: CreateDeployment) -> KeyedDeploymentInfo:
        return await self.rollouts.create_deployment(req)

    async def list_deployments(self, req: ListDeployments) -> DeploymentList:
        return await self.rollouts.list_deployments(req)

    async def get_deployment(self, deployment_id: str) -> DeploymentInfo:
        return await self.rollouts.get_deployment(deployment_id)

    async def pause(self, deployment_id: str) -> DeploymentInfo:
        return await self.rollouts.pause(deployment_id)

    async def resume(self, deployment_id: str) -> DeploymentInfo:
        return await self.rollouts.resume(deployment_id)

    async def cancel(self, deployment_id: str) -> DeploymentInfo:
        return await self.rollouts.cancel(deployment_id)

    async def rollback(
        self, deployment_id: str, request_id: str | None = None
    ) -> KeyedDeploymentInfo:
        return await self.rollouts.rollback(deployment_id, request_id)

    # ---- supervisor ----------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over unfinished deployments."""
        await self.supervisor.tick()

    async def close(self) -> None:
        if self.events.retrying:
            log.error("stopping with events not yet published", count=len(self.events.retrying))
        # They wait in publishes, which may absorb a cancellation: see cancel_and_wait.
        await cancel_and_wait([*self.supervisor.tasks, *self.events.retrying, *self.reports.tasks])
