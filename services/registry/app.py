"""Assembles the registry: database, artifact store (headers and deletion only), bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from schemas.config import Settings
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.db import create_engine
from services.registry.handlers import create_router
from services.registry.service import Registry
from services.registry.store import RegistryStore

__all__ = ["create_service"]

#: Seconds between sweeps (re-publishing unannounced uploads, retention of every model).
SWEEP_INTERVAL = 300.0


@asynccontextmanager
async def create_service(
    settings: Settings,
    *,
    durable_prefix: str = "registry",
    sweep_interval: float = SWEEP_INTERVAL,
) -> AsyncIterator[Registry]:
    """Run the registry until the context exits.

    ``durable_prefix`` names its JetStream consumers (``<prefix>-validated``...): every
    instance of one deployment must use the same prefix so that they share the work.
    """
    engine = create_engine(settings.database)
    store = RegistryStore(engine)
    try:
        await store.create_tables()
        # The registry never decrypts: it reads headers and deletes files, so no key.
        artifacts = ArtifactStore(
            root=settings.model_repository.storage_path,
            kek=None,
            chunk_size=settings.deployment.chunk_size,
        )
        bus = Bus(settings.nats, service="registry")
        registry = Registry(
            settings=settings,
            bus=bus,
            store=store,
            artifacts=artifacts,
            durable_prefix=durable_prefix,
        )
        bus.include(create_router(registry, settings.nats))
        await bus.start()
        sweeper = asyncio.create_task(registry.sweep_forever(sweep_interval))
        try:
            yield registry
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await registry.drain()
            await bus.stop()
    finally:
        await engine.dispose()
