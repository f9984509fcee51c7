"""Rollback deployments: the devices a deployment changed go back to their previous model."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.deployer import DeploymentStatus, DeploymentStrategy
from schemas.events import DeploymentCreated, Event, TargetState
from services.deployer.store import Deployment, Device, ModelSequence, Target

__all__ = ["create_rollback", "next_sequence"]


async def next_sequence(s: AsyncSession, model: str) -> int:
    """The next manifest sequence of ``model`` (a device refuses one older than its own)."""
    row = await s.get(ModelSequence, model, with_for_update=True)
    if row is None:
        row = ModelSequence(model=model, last=0)
        s.add(row)
    row.last += 1
    return row.last


async def create_rollback(s: AsyncSession, dep: Deployment) -> tuple[str | None, list[Event]]:
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
                sequence=await next_sequence(s, model),
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
