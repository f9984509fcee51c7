"""The analyzer's subscribers: thin wrappers that hand events to the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.events import ModelValidated
from services.common.bus import Bus

if TYPE_CHECKING:
    from services.analyzer.app import AnalyzerService

__all__ = ["register"]


def register(bus: Bus, service: AnalyzerService) -> None:
    """Subscribe ``service`` to ``eaf.model.validated`` (durable consumer ``analyzer``)."""

    @bus.consumer(ModelValidated, durable="analyzer")
    async def on_validated(event: ModelValidated) -> None:
        """Analyse a validated model version; publish eaf.model.analyzed."""
        await service.handle_validated(event)
