"""Device reports over MQTT: ``state`` (what runs, how far a deployment has come) and
``online``, applied in order by one worker; chunk requests go to the chunk server.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiomqtt
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import DeploymentTargetUpdated, Event, TargetState
from schemas.transfer import MAX_STATE_PAYLOAD_BYTES, DeviceState
from services.common.logging import get_logger
from services.deployer import domain
from services.deployer.chunks import ChunkServer
from services.deployer.context import DeployerContext
from services.deployer.devices import Devices
from services.deployer.store import Deployment, Target, live_device, utcnow
from services.deployer.supervisor import Supervisor

__all__ = ["Reports"]

log = get_logger(__name__)


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


class Reports:
    """Takes the deployer's MQTT messages: reports to the database, chunk requests on."""

    def __init__(
        self,
        ctx: DeployerContext,
        *,
        devices: Devices,
        supervisor: Supervisor,
        chunks: ChunkServer,
    ) -> None:
        self.ctx = ctx
        self.devices = devices
        self.supervisor = supervisor
        self.chunks = chunks
        self._queue: asyncio.Queue[_Report] = asyncio.Queue()
        #: Each device's state report still in the queue (a newer progress report replaces it).
        self._queued_state: dict[str, _Report] = {}
        self._worker: asyncio.Task[None] | None = None

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """What runs in the background (cancelled when the deployer stops)."""
        return {self._worker} if self._worker is not None else set()

    async def on_mqtt_message(self, message: aiomqtt.Message) -> None:
        """One message of the deployer's subscriptions (``MqttLink.start(on_message=...)``)."""
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            parsed = self.ctx.topics.parse(topic)
        except ValueError:
            return
        kind = parsed.kind.value
        if kind == "artifact_get":
            self.chunks.handle(topic, bytes(payload), message.properties)
        elif kind in ("state", "online"):
            # Reports are applied in order by one worker, so a report's database work never
            # holds up the chunk requests behind it on the subscription.
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._apply_reports())
            device_id = parsed.ident
            # Live messages reach a subscriber with the retain flag clear (the deployer does
            # not ask for retain-as-published): a set flag marks a stored one.
            retained = bool(message.retain)
            if kind == "online":
                self._queued_state.pop(device_id, None)  # later reports queue behind it
                self._queue.put_nowait(
                    _Report(device_id, online=bytes(payload) == b"1", retained=retained)
                )
                return
            state = self._parse_state(device_id, bytes(payload))
            if state is None:
                return
            # A waiting broadcast need not wait for the database.
            self.supervisor.heard_from(device_id, state)
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
            self._queue.put_nowait(report)

    async def _apply_reports(self) -> None:
        while True:
            report = await self._queue.get()
            device_id = report.device_id
            if self._queued_state.get(device_id) is report:
                del self._queued_state[device_id]
            try:
                if report.state is not None:
                    await self._apply_state(device_id, report.state, retained=report.retained)
                else:
                    await self.devices.on_online(device_id, report.online, retained=report.retained)
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
        async with self.ctx.sessions.begin() as s:
            d = await live_device(s, device_id)
            if d is None:
                return
            if not retained:
                d.last_seen = utcnow()
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
        await self.ctx.events.emit(events)

    async def _apply_progress(
        self, s: AsyncSession, t: Target, new: TargetState, p: Any
    ) -> list[Event]:
        old = TargetState(t.state)
        now = utcnow()
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
