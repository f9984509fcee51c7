"""Bus subscribers of the ingester: enrolled devices and deployment progress."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from schemas.events import DeploymentTargetUpdated, DeviceEnrolled
from services.common.bus import Bus
from services.ingester.domain import deployment_line

if TYPE_CHECKING:
    from services.ingester.app import Ingester

__all__ = ["enrolled_durable", "register"]

DEPLOYMENT_DURABLE = "ingester-deployment-target"


def enrolled_durable(client_id: str) -> str:
    """Each instance reads every enrolment (its own durable): each keeps the whole set."""
    return "ingester-enrolled-" + re.sub(r"[^A-Za-z0-9_-]", "_", client_id)


def register(bus: Bus, ingester: Ingester) -> None:
    """Subscribe ``ingester`` to the events it keeps (call before ``bus.start``)."""

    @bus.consumer(DeviceEnrolled, durable=enrolled_durable(ingester.config.client_id))
    async def device_enrolled(event: DeviceEnrolled) -> None:
        """Accept the device's metrics from now on, and those set aside while unknown."""
        await asyncio.to_thread(ingester.enrol, event.device_id)

    # One shared durable: any instance may record a state change (rewrites are harmless).
    @bus.consumer(DeploymentTargetUpdated, durable=DEPLOYMENT_DURABLE)
    async def target_updated(event: DeploymentTargetUpdated) -> None:
        """Record the target's state change as a ``deployment`` point (idempotent)."""
        line = deployment_line(event)
        await asyncio.to_thread(ingester.spool.add_points, [[line]])
        ingester.notify_writer()
