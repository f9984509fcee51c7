"""The ingester's subscribers: enrolled and removed devices, deployment progress, health."""

from __future__ import annotations

import asyncio
import re

from schemas.config import NatsConfig
from schemas.events import DeploymentTargetUpdated, DeviceEnrolled, DeviceRemoved
from services.common.bus import ServiceRouter
from services.ingester.domain import deployment_line
from services.ingester.service import Ingester

__all__ = ["DEPLOYMENT_DURABLE", "create_router", "enrolled_durable", "removed_durable"]

DEPLOYMENT_DURABLE = "ingester-deployment-target"


def enrolled_durable(client_id: str) -> str:
    """Each instance reads every enrolment (its own durable): each keeps the whole set."""
    return "ingester-enrolled-" + re.sub(r"[^A-Za-z0-9_-]", "_", client_id)


def removed_durable(client_id: str) -> str:
    """Each instance reads every removal too: each refuses the removed devices itself."""
    return "ingester-removed-" + re.sub(r"[^A-Za-z0-9_-]", "_", client_id)


def create_router(ingester: Ingester, nats: NatsConfig) -> ServiceRouter:
    """The events ``ingester`` keeps, and its health."""
    router = ServiceRouter(nats, service="ingester")
    router.health()
    client_id = ingester.config.client_id

    @router.consumer(DeviceEnrolled, durable=enrolled_durable(client_id))
    async def device_enrolled(event: DeviceEnrolled) -> None:
        """Accept the device's metrics from now on, and those set aside while unknown."""
        at = event.occurred_at.timestamp()
        await asyncio.to_thread(ingester.enrol, event.device_id, enrolled_at=at)

    @router.consumer(DeviceRemoved, durable=removed_durable(client_id))
    async def device_removed(event: DeviceRemoved) -> None:
        """Refuse the device's metrics from now on (set aside as ``device_removed``)."""
        at = event.occurred_at.timestamp()
        await asyncio.to_thread(ingester.remove_device, event.device_id, removed_at=at)

    # One shared durable: any instance may record a state change (rewrites are harmless).
    @router.consumer(DeploymentTargetUpdated, durable=DEPLOYMENT_DURABLE)
    async def target_updated(event: DeploymentTargetUpdated) -> None:
        """Record the target's state change as a ``deployment`` point (idempotent)."""
        line = deployment_line(event)
        await asyncio.to_thread(ingester.spool.add_points, [[line]])
        ingester.notify_writer()

    return router
