"""Rollouts: create a deployment (to a device, a group or labels, in waves), read them,
pause, resume, cancel and roll back. The supervisor moves them on."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.deployer import (
    Capabilities,
    CreateDeployment,
    DeploymentInfo,
    DeploymentList,
    DeploymentStatus,
    DeploymentStrategy,
    KeyedDeploymentInfo,
    ListDeployments,
    TargetInfo,
    TargetSelector,
)
from schemas.events import DeploymentCreated, DeploymentOutcome, Event, TargetState
from services.common.artifacts import ArtifactError, ArtifactStore
from services.deployer import domain, idempotency
from services.deployer.catalog import DEPLOYABLE, Catalog
from services.deployer.context import DeployerContext, aware
from services.deployer.domain import ACTIVE_STATUSES
from services.deployer.errors import (
    DeploymentNotFound,
    IncompatibleDevices,
    NoTargets,
    NotDeployable,
    WrongDeploymentState,
)
from services.deployer.rollbacks import create_rollback, next_sequence
from services.deployer.store import Deployment, Device, DeviceRemoval, Target, utcnow
from services.deployer.supervisor import Supervisor

__all__ = ["Rollouts"]


def _describe(target: TargetSelector) -> str:
    if target.device_id is not None:
        return f"device {target.device_id!r}"
    if target.group is not None:
        return f"group {target.group!r}"
    return f"labels {target.labels!r}"


class Rollouts:
    """Deployments as operators see and steer them."""

    def __init__(
        self,
        ctx: DeployerContext,
        *,
        store: ArtifactStore,
        catalog: Catalog,
        supervisor: Supervisor,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.catalog = catalog
        self.supervisor = supervisor

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

    async def create_deployment(self, req: CreateDeployment) -> KeyedDeploymentInfo:
        """Start a deployment; with ``request_id``, a repeat answers the one it started
        (``replayed``, see ``idempotency.py``)."""
        fields = req.model_dump(mode="json", exclude={"request_id"})
        key = idempotency.Key.of("create", req.request_id, fields)
        if key is None:
            return idempotency.first(await self._create_deployment(req, None))
        return await idempotency.run_once(
            self.ctx.sessions, key, lambda k: self._create_deployment(req, k), self.get_deployment
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
        timeout = req.device_timeout or self.ctx.settings.deployment.default_device_timeout
        async with self.ctx.sessions.begin() as s:
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
            sequence = await next_sequence(s, version.model)
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
        await self.ctx.events.emit(
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
        self.supervisor.supervise_soon(deployment_id)
        return await self.get_deployment(deployment_id)

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
            created_at=aware(dep.created_at) or utcnow(),
            updated_at=aware(dep.updated_at) or utcnow(),
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
                    updated_at=aware(t.updated_at) or utcnow(),
                )
                for t in targets
            )
            if with_targets
            else (),
        )

    async def get_deployment(self, deployment_id: str) -> DeploymentInfo:
        async with self.ctx.sessions() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            return await self._deployment_info(s, dep)

    async def list_deployments(self, req: ListDeployments) -> DeploymentList:
        async with self.ctx.sessions() as s:
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
        await self.supervisor.tick()
        return await self.get_deployment(deployment_id)

    async def _set_status(
        self, deployment_id: str, old: DeploymentStatus, new: DeploymentStatus
    ) -> None:
        async with self.ctx.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            if dep.status != old.value:
                action = "pause" if new is DeploymentStatus.PAUSED else "resume"
                raise WrongDeploymentState(deployment_id, dep.status, action)
            dep.status = new.value
            dep.updated_at = utcnow()

    async def cancel(self, deployment_id: str) -> DeploymentInfo:
        async with self.ctx.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            if dep.status not in ACTIVE_STATUSES:
                raise WrongDeploymentState(deployment_id, dep.status, "cancel")
            events = await self.supervisor.finish(
                s, dep, DeploymentOutcome.CANCELLED, "cancelled by user"
            )
        await self.ctx.events.emit(events)
        return await self.get_deployment(deployment_id)

    async def rollback(
        self, deployment_id: str, request_id: str | None = None
    ) -> KeyedDeploymentInfo:
        """Roll back; with ``request_id``, a repeat answers the rollback it started."""
        key = idempotency.Key.of("rollback", request_id, {"deployment_id": deployment_id})
        if key is None:
            return idempotency.first(await self._rollback(deployment_id, None))
        return await idempotency.run_once(
            self.ctx.sessions, key, lambda k: self._rollback(deployment_id, k), self.get_deployment
        )

    async def _rollback(self, deployment_id: str, key: idempotency.Key | None) -> DeploymentInfo:
        async with self.ctx.sessions.begin() as s:
            dep = await s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentNotFound(deployment_id)
            events: list[Event] = []
            if dep.status in ACTIVE_STATUSES:
                events += await self.supervisor.finish(
                    s, dep, DeploymentOutcome.ROLLED_BACK, "rollback"
                )
            rollback_id, more = await create_rollback(s, dep)
            if key is not None and rollback_id is not None:
                await idempotency.claim(s, key, rollback_id)
        await self.ctx.events.emit([*events, *more])
        if rollback_id is None:
            raise WrongDeploymentState(deployment_id, "without devices to roll back", "roll back")
        await self.supervisor.tick()
        return await self.get_deployment(rollback_id)
