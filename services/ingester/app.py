"""Assembles the ingester: the ``Ingester`` and its bus (enrolment and deployment events,
health); ``python -m services.ingester`` runs ``create_service``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from schemas.config import Settings
from services.common.bus import Bus
from services.ingester.handlers import create_router
from services.ingester.service import Ingester

__all__ = ["create_service"]


@contextlib.asynccontextmanager
async def create_service(settings: Settings) -> AsyncIterator[Ingester]:
    """The ingester with its bus: enrolment and deployment events, health."""
    bus = Bus(settings.nats, service="ingester")
    ingester = Ingester(settings)
    bus.include(create_router(ingester, settings.nats))
    async with ingester:
        await bus.start()
        try:
            yield ingester
        finally:
            await bus.stop()
