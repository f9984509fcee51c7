"""What the deployer's parts share: settings, the database, topics, the MQTT link, events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.config import Settings
from schemas.events import Event
from schemas.topics import Topics
from services.common.bus import Bus
from services.common.logging import get_logger
from services.deployer.mqtt import MqttLink

__all__ = ["DeployerContext", "Events", "aware"]

log = get_logger(__name__)


def aware(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; every stored one is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Events:
    """Publishes the events of committed changes; one the bus refuses is retried until sent."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        #: Events being retried in the background.
        self.retrying: set[asyncio.Task[None]] = set()

    async def emit(self, events: Sequence[Event]) -> None:
        for event in events:
            try:
                await self.bus.publish(event)
            except Exception as exc:
                # The DB change is committed: the event must follow. Keep trying with the
                # same event id (the stream stores it once even if an attempt got through).
                log.warning("event not published yet; retrying", subject=event.SUBJECT,
                            error=repr(exc))  # fmt: skip
                self._republish(event)

    def _republish(self, event: Event) -> None:
        async def run() -> None:
            delay = 0.5
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.bus.publish(event)
                except Exception:
                    delay = min(delay * 2, 10.0)
                else:
                    return

        task = asyncio.get_running_loop().create_task(run())
        self.retrying.add(task)
        task.add_done_callback(self.retrying.discard)


@dataclass(frozen=True, slots=True)
class DeployerContext:
    """The resources every part of one deployer instance uses."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    topics: Topics
    link: MqttLink
    events: Events
