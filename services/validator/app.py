"""Assembles the validator: sandbox self-test, database, artifact source, bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import async_sessionmaker

from modelkit.probe import SANDBOX_FIX, prove_sandbox
from schemas.config import Settings
from services.common.artifacts import ArtifactSource, open_artifacts
from services.common.bus import Bus
from services.common.db import create_engine
from services.common.logging import get_logger
from services.common.migrate import upgrade
from services.validator.handlers import create_router
from services.validator.service import CONSUMER, Validator, check_validation

__all__ = ["create_service"]

log = get_logger(__name__)


@asynccontextmanager
async def create_service(
    settings: Settings, *, artifacts: ArtifactSource | None = None, durable: str = CONSUMER
) -> AsyncIterator[Validator]:
    """Start the validator (bus, health subject, database, consumer); stop it on exit."""
    await prove_sandbox(settings.validator, section="validator")
    problem = await check_validation(settings.validator)
    if problem:
        # Every upload would fail for this reason, the platform's: the uploads wait in the
        # stream instead (the durable consumer takes them once the service is fixed).
        problem = f"validation is broken, uploads wait: {problem}"
        log.error("sandbox self-test failed: " + problem, fix=SANDBOX_FIX)
    bus = Bus(settings.nats, service="validator")
    engine = create_engine(settings.database)
    try:
        await upgrade(engine, "services.common")
        validator = Validator(
            settings,
            bus=bus,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            artifacts=artifacts if artifacts is not None else open_artifacts(settings),
            consumer=durable,
        )
        validator.problem = problem
        bus.include(create_router(validator, settings.nats))
        # Workers for the first model start now; the bus stops before they are killed.
        async with validator.workers, bus:
            yield validator
    finally:
        await engine.dispose()
