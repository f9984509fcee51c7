"""Desired-state handling and the transfer: the retained manifest, chunk requests, chunks.

A manifest is checked (signature, device, sequence, expiry), then either adopted at once
(the same bytes, a rollback to the previous model) or pulled: a window of outstanding
chunk requests, chunks taken from the device's own topic and, for a broadcast, from the
artifact's shared topic. A complete transfer is verified and handed to activation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime import _faults
from edge_runtime._activation import Activation, active_of
from edge_runtime._reporting import PROGRESS_INTERVAL
from edge_runtime._transfer import (
    ChunkOutcome,
    Transfer,
    check_manifest,
    follow_key_chain,
    open_manifest_key,
)
from edge_runtime.errors import TransferRefused
from schemas.events import TargetState
from schemas.manifest import Manifest
from schemas.transfer import (
    CHUNK_ARTIFACT_PROPERTY,
    CHUNK_INDEX_PROPERTY,
    MAX_INDEXES_PER_REQUEST,
    ChunkRequest,
    Rejection,
    RejectionCode,
)

__all__ = ["Deployments"]

_FINAL = {"active", "failed", "rolled_back"}


class Deployments(Activation):
    """The part of ``EdgeRuntime`` that follows the desired state and pulls its model."""

    window_size: int
    stall_timeout: float
    _platform_key: Ed25519PublicKey
    _private_key: X25519PrivateKey
    _client: aiomqtt.Client | None
    _job: Transfer | None
    _finishing: asyncio.Task[None] | None
    _wake: asyncio.Event
    _progress_built: float
    _broadcast_topic: str | None
    #: Counters for operators and tests.
    stats: dict[str, int]

    async def _on_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the platform cleared the desired state
        try:
            self._follow_key_chain(payload)
            manifest = check_manifest(
                payload,
                device_id=self.device_id,
                platform_key=self._platform_key,
                sequences=self.state.sequences(),
                retired=self.state.retired_key_ids(),
            )
        except TransferRefused as refusal:
            if refusal.code is RejectionCode.SIGNATURE and (
                self.state.outcomes().get(refusal.deployment_id or "") in _FINAL
            ):
                # The retained manifest of a finished deployment, signed before a rotation
                # this device has followed since: nothing to do, nothing to report.
                return
            self._refuse(refusal)
            return
        deployment = manifest.deployment_id
        outcome = self.state.outcomes().get(deployment)
        job = self._job
        if job is not None and job.deployment_id == deployment:
            job.manifest = manifest  # a re-issue (fresh expiry) of what is in progress
            return
        if outcome in _FINAL:
            # Finished already (the retained manifest stays until replaced). A re-issue
            # means the platform missed the outcome: say it again.
            if self._progress is None or self._progress.deployment_id != deployment:
                self._set_progress(manifest, TargetState(outcome))
            else:
                self._report(transition=True)
            return
        if self._finishing is not None and not self._finishing.done():
            self._log("activation in progress; the new manifest waits for the next delivery")
            return
        active = self.host.active
        if active is not None and active.artifact_id == manifest.artifact_id:
            # Already running these bytes: adopt the new identity without a transfer.
            self.state.accept_sequence(manifest.model, manifest.sequence)
            info = active_of(manifest)
            await self._install(info, self.state.model_path(info.artifact_id), manifest)
            return
        installed = self.state.installed()
        if (
            manifest.rollback
            and installed.previous is not None
            and installed.previous.artifact_id == manifest.artifact_id
            and self.state.model_path(manifest.artifact_id).exists()
        ):
            self.state.accept_sequence(manifest.model, manifest.sequence)
            self._cancel_job()
            self._set_progress(manifest, TargetState.ACTIVATING)
            self._finishing = asyncio.create_task(
                self._activate(manifest, self.state.model_path(manifest.artifact_id))
            )
            return
        try:
            dek = open_manifest_key(manifest, self._private_key)
        except TransferRefused as refusal:
            self._refuse(refusal)
            return
        self.state.accept_sequence(manifest.model, manifest.sequence)
        self._cancel_job()
        self.state.clear_staging(keep=manifest.artifact_id)
        self._job = Transfer(self.state, manifest, payload, dek)
        self._log(f"deployment {deployment}: {manifest.model}@{manifest.version} accepted")
        await self._follow_broadcast(manifest)
        self._set_progress(manifest, TargetState.DOWNLOADING, job=self._job)
        if self._job.complete:
            self._start_finish(self._job)
        self._wake.set()

    def _follow_key_chain(self, payload: bytes) -> None:
        """Move to a newer platform key through the rotation statements in ``payload``."""
        trusted, applied = follow_key_chain(payload, self.state.trusted_key())
        if applied:
            self.state.save_trust(trusted, applied)
            self._platform_key = trusted.public_key
            self._log(
                f"platform key rotated to {trusted.key_id} (version {trusted.version}) "
                f"through {len(applied)} statement(s)"
            )

    async def _follow_broadcast(self, manifest: Manifest) -> None:
        client = self._client
        if client is None or not manifest.broadcast:
            return
        topic = self.topics.artifact_chunks(manifest.artifact_id)
        if self._broadcast_topic == topic:
            return
        if self._broadcast_topic is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(self._broadcast_topic)
        await client.subscribe(topic, qos=1)
        self._broadcast_topic = topic

    def _cancel_job(self) -> None:
        if self._job is not None:
            self._job.close()
            self._job = None

    # ---- chunks ------------------------------------------------------------------------
    def _on_chunk(self, message: aiomqtt.Message, payload: bytes) -> None:
        job = self._job
        if job is None:
            return
        props = _user_properties(message.properties)
        try:
            index = int(props.get(CHUNK_INDEX_PROPERTY, ""))
        except ValueError:
            self.stats["chunks_refused"] += 1
            return
        artifact = props.get(CHUNK_ARTIFACT_PROPERTY, "")
        try:
            outcome = job.accept(index, artifact, payload)
        except TransferRefused as refusal:
            self.stats["chunks_refused"] += 1
            self._fail_job(job, refusal)
            return
        if outcome is ChunkOutcome.REFUSED:
            self.stats["chunks_refused"] += 1
            if job.last_refusal is not None:
                self._refuse(job.last_refusal)
        elif outcome is ChunkOutcome.DUPLICATE:
            self.stats["duplicates"] += 1
        else:
            self.stats["chunks_received"] += 1
            # The progress report goes out at most every PROGRESS_INTERVAL anyway: build it
            # (a snapshot reads the installed models from disk) a few times a second, not
            # for every chunk. Waiters still hear of every chunk.
            now = time.monotonic()
            if job.complete or now - self._progress_built >= PROGRESS_INTERVAL / 4:
                self._progress_built = now
                self._set_progress(job.manifest, TargetState.DOWNLOADING, job=job, throttle=True)
            else:
                self._changed_soon()
            if job.complete:
                self._start_finish(job)
        if job.pulling or self._job is not job:
            # A window slot is free (or the job ended). A device waiting for the broadcast
            # has nothing to request: its driver wakes on its own for the stall check.
            self._wake.set()

    async def _drive(self, client: aiomqtt.Client) -> None:
        """Keep a window of chunk requests outstanding for the current transfer."""
        while True:
            job = self._job
            if job is not None and not job.complete:
                if job.stalled(self.stall_timeout):
                    self._log(f"stalled; re-requesting {len(job.missing())} missing chunks")
                indexes = job.next_request(self.window_size)
                for start in range(0, len(indexes), MAX_INDEXES_PER_REQUEST):
                    part = indexes[start : start + MAX_INDEXES_PER_REQUEST]
                    await self._request(client, job, part)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, self.stall_timeout / 4)):
                    await self._wake.wait()

    async def _request(self, client: aiomqtt.Client, job: Transfer, indexes: list[int]) -> None:
        request = ChunkRequest(
            device_id=self.device_id, deployment_id=job.deployment_id, indexes=tuple(indexes)
        )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.topics.device_chunks(self.device_id)
        props.CorrelationData = job.deployment_id.encode()
        self.stats["chunks_requested"] += len(indexes)
        await client.publish(
            self.topics.artifact_get(job.manifest.artifact_id),
            request.model_dump_json().encode(),
            qos=1,
            properties=props,
        )

    def _start_finish(self, job: Transfer) -> None:
        if self._finishing is not None and not self._finishing.done():
            return
        self._finishing = asyncio.create_task(self._finish(job))

    async def _finish(self, job: Transfer) -> None:
        self._set_progress(job.manifest, TargetState.VERIFYING, job=job)
        _faults.point("verifying")
        try:
            path = await job.finish()
        except TransferRefused as refusal:
            self._fail_job(job, refusal)
            return
        except OSError as exc:
            self._fail_job(job, TransferRefused(RejectionCode.STORAGE, str(exc)))
            return
        _faults.point("moved")
        if self._job is job:
            self._job = None
        await self._unfollow_broadcast()
        self.state.clear_staging()
        await self._activate(job.manifest, path)

    def _fail_job(self, job: Transfer, refusal: TransferRefused) -> None:
        self._log(f"deployment {job.deployment_id} failed: {refusal}")
        job.close()
        if self._job is job:
            self._job = None
        self.state.record_outcome(job.deployment_id, "failed")
        self.state.clear_staging()
        self._rejection = Rejection(
            code=refusal.code, detail=refusal.detail, at=int(time.time()),
            deployment_id=job.deployment_id,
        )  # fmt: skip
        self._set_progress(
            job.manifest,
            TargetState.FAILED,
            job=job,
            detail=refusal.detail,
            error_code=refusal.code,
        )
        asyncio.get_running_loop().create_task(self._unfollow_broadcast())

    async def _unfollow_broadcast(self) -> None:
        topic, self._broadcast_topic = self._broadcast_topic, None
        if topic is not None and self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(topic)


def _user_properties(properties: Properties | None) -> dict[str, str]:
    if properties is None:
        return {}
    pairs = getattr(properties, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}
