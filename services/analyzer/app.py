"""Assembles the analyzer: sandbox self-test, database, artifact source, bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import async_sessionmaker

from modelkit.probe import SANDBOX_FIX, prove_sandbox
from schemas.config import Settings
from services.analyzer.handlers import create_router
from services.analyzer.service import CONSUMER, Analyzer
from services.common.artifacts import ArtifactSource, open_artifacts
from services.common.bus import Bus
from services.common.db import create_engine
from services.common.logging import get_logger
from services.common.migrate import upgrade

__all__ = ["create_service"]

log = get_logger(__name__)


@asynccontextmanager
async def create_service(
    settings: Settings, *, artifacts: ArtifactSource | None = None, durable: str = CONSUMER
) -> AsyncIterator[Analyzer]:
    """Start the analyzer (bus, health subject, database, consumer); stop it on exit."""
    await prove_sandbox(settings.analyzer, section="analyzer")
    bus = Bus(settings.nats, service="analyzer")
    engine = create_engine(settings.database)
    try:
        await upgrade(engine, "services.common", "services.analyzer")
        analyzer = Analyzer(
            settings,
            bus=bus,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            artifacts=artifacts if artifacts is not None else open_artifacts(settings),
            consumer=durable,
        )
        # Before any model: each would otherwise find out alone (and its report would
        # lack the latency). The analyzer still profiles: a report without latency says
        # why, and the health says what is broken.
        analyzer.problem = await analyzer.check()
        if analyzer.problem:
            log.error("sandbox self-test failed: " + analyzer.problem, fix=SANDBOX_FIX)
        bus.include(create_router(analyzer, settings.nats))
        # Workers for the first model start now; the bus stops before they are killed.
        async with analyzer.workers, bus:
            yield analyzer
    finally:
        await engine.dispose()
