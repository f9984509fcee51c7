"""The analyzer's subscribers: thin wrappers that hand events to the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.events import ModelValidated
from services.common.bus import Bus

if TYPE_CHECKING:
    from services.analyzer.app import AnalyzerService

__all__ = ["register"]


def register(bus: Bus, service: AnalyzerService, *, durable: str = "analyzer") -> None:
    """Subscribe ``service`` to ``eaf.model.validated`` (durable consumer ``durable``;
    every instance of one deployment uses the same name, so they share the work)."""

    @bus.consumer(ModelValidated, durable=durable)
    async def on_validated(event: ModelValidated) -> None:
        """Analyse a validated model version; publish eaf.model.analyzed."""
        await service.handle_validated(event)
