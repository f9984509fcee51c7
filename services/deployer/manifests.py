"""Signed manifests to devices, and which devices may fetch which artifact's chunks."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import crypto
from schemas.events import TargetState
from schemas.keychain import RotationStatement
from schemas.manifest import Manifest
from services.common.artifacts import ArtifactError, ArtifactStore
from services.common.logging import get_logger
from services.deployer.context import DeployerContext
from services.deployer.mqtt import MqttUnavailableError
from services.deployer.store import Device, Target

__all__ = ["ChunkGrants", "Manifests"]

log = get_logger(__name__)


class ChunkGrants:
    """Chunks go only to devices with an unfinished target for the artifact.

    The database decides. A yes is remembered for ``GRANT_TTL`` seconds so that a transfer
    costs about one query a second rather than one per chunk request; so a grant ends at
    most that long after its target does (finished, failed, cancelled, timed out, on this
    deployer or another). A removed device's grants end at once.
    """

    #: Seconds a confirmed grant is trusted before the database is asked again.
    GRANT_TTL = 1.0

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        #: (device, artifact) -> until when the grant is trusted without a query.
        self._allowed: dict[tuple[str, str], float] = {}

    def allow(self, device_id: str, artifact_id: str) -> None:
        self._allowed[(device_id, artifact_id)] = self.clock() + self.GRANT_TTL

    def forget(self, device_id: str) -> None:
        for key in [k for k in self._allowed if k[0] == device_id]:
            self._allowed.pop(key, None)

    async def authorize(self, device_id: str, artifact_id: str) -> bool:
        """May ``device_id`` fetch ``artifact_id`` now? (the chunk server's question)"""
        key = (device_id, artifact_id)
        if self._allowed.get(key, 0.0) > self.clock():
            return True
        self._allowed.pop(key, None)
        async with self.sessions() as s:
            found = await s.scalar(
                select(Target.device_id).where(
                    Target.device_id == device_id,
                    Target.artifact_id == artifact_id,
                    Target.state.not_in([st.value for st in TargetState if st.terminal]),
                )
            )
        if found is not None:
            self.allow(device_id, artifact_id)
        return found is not None


class Manifests:
    """Builds a target's manifest, seals the data key to its device and publishes it."""

    def __init__(
        self,
        ctx: DeployerContext,
        *,
        store: ArtifactStore,
        signing_key: Ed25519PrivateKey,
        key_chain: tuple[RotationStatement, ...] = (),
        grants: ChunkGrants,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.signing_key = signing_key
        #: The rotations that lead devices from older keys to ``signing_key``: sent along.
        self.key_chain = key_chain
        self.grants = grants

    def build(self, t: Target, d: Device) -> Manifest:
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
            "expires_at": now + self.ctx.settings.deployment.manifest_ttl,
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

    async def publish(self, t: Target, d: Device) -> Manifest:
        """Publish target ``t``'s manifest (retained) to device ``d``; raises on failure."""
        manifest = self.build(t, d)
        await self.ctx.link.publish(
            self.ctx.topics.desired(t.device_id),
            manifest.sign(self.signing_key, self.key_chain).to_bytes(),
            qos=1,
            retain=True,
        )
        self.grants.allow(t.device_id, t.artifact_id)
        return manifest

    async def notify(self, t: Target, d: Device) -> None:
        """``publish``, with a failure logged: the supervisor notifies again later."""
        try:
            await self.publish(t, d)
        except (MqttUnavailableError, aiomqtt.MqttError, ArtifactError) as exc:
            log.warning("manifest not published", device=t.device_id, error=str(exc))
