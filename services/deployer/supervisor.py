"""The rollout supervisor: notify due targets, time out stalled ones, advance or stop
waves, finish deployments, broadcast a wave's artifact.

Several deployer instances may run against one database; the supervisor's updates are
conditional, so a target is notified by one of them.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.deployer import DeploymentStatus
from schemas.events import DeploymentCompleted, DeploymentOutcome, Event, TargetState
from schemas.transfer import DeviceState
from services.common.logging import get_logger
from services.deployer import domain
from services.deployer.chunks import ChunkServer
from services.deployer.context import DeployerContext, aware
from services.deployer.domain import ACTIVE_STATUSES
from services.deployer.manifests import Manifests
from services.deployer.rollbacks import create_rollback
from services.deployer.store import Deployment, Device, Target, live_device, utcnow
from services.deployer.targets import REMOVED_DETAIL, cancel, fail_unsealable, target_event

__all__ = ["Supervisor"]

log = get_logger(__name__)


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


class Supervisor:
    """Moves unfinished deployments on: ``tick`` passes over all of them."""

    def __init__(self, ctx: DeployerContext, *, manifests: Manifests, chunks: ChunkServer) -> None:
        self.ctx = ctx
        self.manifests = manifests
        self.chunks = chunks
        #: First supervisor passes of new deployments, run after their creation answers.
        self._soon: set[asyncio.Task[None]] = set()
        self._broadcasts: set[asyncio.Task[None]] = set()
        #: Broadcasts waiting for their wave: deployment id -> devices not yet heard from.
        self._awaiting: list[_WaveReadiness] = []

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """What runs in the background (cancelled when the deployer stops)."""
        return self._soon | self._broadcasts

    async def tick(self) -> None:
        """One pass over unfinished deployments."""
        async with self.ctx.sessions() as s:
            ids = (
                await s.scalars(
                    select(Deployment.deployment_id).where(Deployment.status.in_(ACTIVE_STATUSES))
                )
            ).all()
        for deployment_id in ids:
            try:
                await self.supervise(deployment_id)
            except Exception:
                log.exception("supervising a deployment failed", deployment=deployment_id)

    async def supervise(self, deployment_id: str) -> None:
        cfg = self.ctx.settings.deployer
        events: list[Event] = []
        to_notify: list[tuple[Target, Device]] = []
        async with self.ctx.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None or dep.status not in ACTIVE_STATUSES:
                return
            targets = list(
                (await s.scalars(select(Target).where(Target.deployment_id == deployment_id))).all()
            )
            now = utcnow()
            # Stalled targets: notify again with back-off, then time out.
            for t in targets:
                state = TargetState(t.state)
                if state.terminal or state is TargetState.PENDING:
                    continue
                since = aware(t.last_progress_at) or aware(t.notified_at) or now
                allowed = dep.device_timeout * (2**t.attempts)
                if (now - since).total_seconds() <= allowed:
                    continue
                if t.attempts < cfg.max_retries:
                    t.attempts += 1
                    t.last_progress_at = now
                    d = await s.get(Device, t.device_id)
                    if d is not None and (unsealable := fail_unsealable(t, d, now)) is not None:
                        events.append(unsealable)  # notified before keys were checked at enrolment
                    elif d is not None:
                        to_notify.append((t, d))
                else:
                    t.state = TargetState.TIMED_OUT.value
                    t.detail = f"no progress for {allowed:g} s after {t.attempts} retries"
                    t.updated_at = now
                    events.append(target_event(t))
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
                    events += await self.finish(s, dep, DeploymentOutcome.STOPPED, reason)
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
                    d = await live_device(s, t.device_id)
                    if d is None:  # removed while its deployment was being created
                        events.append(cancel(t, REMOVED_DETAIL, now))
                    elif (unsealable := fail_unsealable(t, d, now)) is not None:
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
                    events.append(target_event(t))
                if broadcast:
                    self._schedule_broadcast(
                        live[0][0].artifact_id, deployment_id, {t.device_id for t, _ in live}
                    )
            if dep.status in ACTIVE_STATUSES and all(
                TargetState(t.state).terminal for t in targets
            ):
                outcome = domain.final_outcome(TargetState(t.state) for t in targets)
                events += await self.finish(s, dep, outcome, "")
        # The events first: a device answers its manifest within milliseconds, and its
        # target's 'notified' must not reach the bus after the states the device reports.
        await self.ctx.events.emit(events)
        # All at once: each publish waits for its PUBACK, and a wave's devices should get
        # their manifests together (a broadcast waits for the last of them).
        await asyncio.gather(*(self.manifests.notify(t, d) for t, d in to_notify))

    async def finish(
        self, s: AsyncSession, dep: Deployment, outcome: DeploymentOutcome, reason: str
    ) -> list[Event]:
        events: list[Event] = []
        now = utcnow()
        targets = (
            await s.scalars(select(Target).where(Target.deployment_id == dep.deployment_id))
        ).all()
        if outcome in (DeploymentOutcome.STOPPED, DeploymentOutcome.CANCELLED):
            for t in targets:
                if t.state == TargetState.PENDING.value or (
                    outcome is DeploymentOutcome.CANCELLED and not TargetState(t.state).terminal
                ):
                    events.append(cancel(t, reason, now))
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
            _, more = await create_rollback(s, dep)
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
                async with asyncio.timeout(self.ctx.settings.deployer.stall_timeout):
                    await wave.ready.wait()
            except TimeoutError:
                log.info(
                    "broadcast starts before every device is ready",
                    artifact=artifact_id,
                    waiting=len(wave.waiting),
                )
            finally:
                self._awaiting.remove(wave)
            try:
                await self.chunks.broadcast(artifact_id)
            except Exception as exc:
                log.warning("broadcast failed", artifact=artifact_id, error=repr(exc))

        task = asyncio.get_running_loop().create_task(run())
        self._broadcasts.add(task)
        task.add_done_callback(self._broadcasts.discard)

    def heard_from(self, device_id: str, state: DeviceState) -> None:
        """A report on a deployment (or a refusal of it): the device is past its manifest."""
        named = {x.deployment_id for x in (state.deployment, state.rejection) if x is not None}
        for wave in self._awaiting:
            if wave.deployment_id in named:
                wave.heard_from(device_id)

    def not_waiting_for(self, device_id: str) -> None:
        """The device was removed: no broadcast waits for it."""
        for wave in self._awaiting:
            wave.heard_from(device_id)

    def supervise_soon(self, deployment_id: str) -> None:
        """A pass over one deployment, in the background (after a reply has gone out)."""

        async def run() -> None:
            try:
                await self.supervise(deployment_id)
            except Exception:
                # The supervisor's next tick tries again.
                log.exception("supervising a deployment failed", deployment=deployment_id)

        task = asyncio.get_running_loop().create_task(run())
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)
