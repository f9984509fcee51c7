"""The device's reports: the retained ``state`` topic, its throttle, and who waits for a change.

Every transition (accepted, verifying, active, refused...) is queued and published in
order; download progress coalesces and goes out at most every ``PROGRESS_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiomqtt

from edge_runtime._model import ModelHost
from edge_runtime._state import StateDir
from edge_runtime._transfer import Transfer
from edge_runtime.errors import TransferRefused
from schemas.events import TargetState
from schemas.manifest import Manifest
from schemas.topics import Topics
from schemas.transfer import DeploymentProgress, DeviceState, Rejection, RejectionCode

__all__ = ["PROGRESS_INTERVAL", "RUNTIME_VERSION", "Reporting"]

RUNTIME_VERSION = "0.1.0"
PROGRESS_INTERVAL = 0.5
_MAX_QUEUED_REPORTS = 200


class Reporting:
    """The part of ``EdgeRuntime`` that builds, queues and publishes the device's state."""

    state: StateDir
    host: ModelHost
    device_id: str
    topics: Topics
    _log: Callable[[str], None]
    _progress: DeploymentProgress | None
    _rejection: Rejection | None
    _reports: list[DeviceState]
    _latest: DeviceState | None
    _report_wake: asyncio.Event
    #: Set with each transition: it ends the progress throttle's pause at once.
    _transition_wake: asyncio.Event
    _changed: asyncio.Condition
    #: Callers in ``wait_for``: only then is a change worth a notification task.
    _waiters: int
    #: Set by a stop once the goodbye is on its way: no state report may follow it.
    _leaving: bool

    def snapshot(self) -> DeviceState:
        """What the device would report now."""
        installed = self.state.installed()
        return DeviceState(
            device_id=self.device_id,
            reported_at=int(time.time()),
            active=self.host.active or installed.active,
            previous=installed.previous,
            deployment=self._progress,
            rejection=self._rejection,
            runtime_version=RUNTIME_VERSION,
        )

    def _refuse(self, refusal: TransferRefused) -> None:
        self._log(f"refused: {refusal}")
        self._rejection = Rejection(
            code=refusal.code,
            detail=refusal.detail,
            at=int(time.time()),
            deployment_id=refusal.deployment_id,
        )
        self._report(transition=True)

    def _set_progress(
        self,
        manifest: Manifest,
        state: TargetState,
        *,
        job: Transfer | None = None,
        detail: str = "",
        error_code: RejectionCode | None = None,
        throttle: bool = False,
    ) -> None:
        self._progress = DeploymentProgress(
            deployment_id=manifest.deployment_id,
            state=state,
            model=manifest.model,
            version=manifest.version,
            sequence=manifest.sequence,
            chunks_received=job.chunks_received if job else manifest.chunk_count,
            chunk_count=manifest.chunk_count,
            bytes_received=job.bytes_received if job else manifest.size,
            detail=detail,
            error_code=error_code,
        )
        self._report(transition=not throttle)

    def _report(self, *, transition: bool) -> None:
        snapshot = self.snapshot()
        if transition:
            self._reports.append(snapshot)
            del self._reports[:-_MAX_QUEUED_REPORTS]
            self._transition_wake.set()
        self._latest = snapshot
        self._report_wake.set()
        self._changed_soon()

    def _changed_soon(self) -> None:
        if self._waiters:
            asyncio.get_running_loop().create_task(self._notify_change())

    async def _notify_change(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _reporter(self, client: aiomqtt.Client) -> None:
        topic = self.topics.state(self.device_id)
        loop = asyncio.get_running_loop()
        sent: DeviceState | None = None
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            # Every transition in order, then the latest progress (which may coalesce).
            while self._reports:
                state = self._reports[0]
                await self._publish_state(client, topic, state)
                self._reports.pop(0)
                sent = state
            latest = self._latest
            if latest is not None and latest is not sent:
                await self._publish_state(client, topic, latest)
                sent = latest
            # Progress goes out at most every PROGRESS_INTERVAL; a transition (download
            # finished, model active) does not wait for the pause to end.
            deadline = loop.time() + PROGRESS_INTERVAL
            self._transition_wake.clear()
            if not self._reports:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._transition_wake.wait()

    async def _publish_state(self, client: aiomqtt.Client, topic: str, state: DeviceState) -> None:
        if self._leaving:
            # After the goodbye a state report would tell the platform the device is
            # still there: wait for the session to end (the next one reports again).
            await asyncio.get_running_loop().create_future()
        await client.publish(topic, state.model_dump_json().encode(), qos=1, retain=True)
