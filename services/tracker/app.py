"""Assembles the tracker: database, InfluxDB reader, bus, periodic regression checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from schemas.config import Settings
from services.common.bus import Bus
from services.common.db import create_engine
from services.tracker.handlers import create_router
from services.tracker.service import Tracker
from services.tracker.store import InfluxReader, RegressionStore

__all__ = ["create_service"]


@contextlib.asynccontextmanager
async def create_service(settings: Settings) -> AsyncIterator[Tracker]:
    """The tracker with its bus, database and periodic checks."""
    engine = create_engine(settings.database)
    regressions = RegressionStore(engine)
    try:
        await regressions.create_tables()
        async with InfluxReader(settings.influxdb) as influx:
            bus = Bus(settings.nats, service="tracker")
            tracker = Tracker(settings, bus=bus, influx=influx, regressions=regressions)
            bus.include(create_router(tracker, settings.nats))
            await bus.start()
            checks = asyncio.create_task(tracker.evaluate_forever())
            try:
                yield tracker
            finally:
                checks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checks
                await bus.stop()
    finally:
        await engine.dispose()
