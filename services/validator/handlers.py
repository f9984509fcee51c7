"""The validator's subscribers: thin wrappers that hand events to the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.events import ModelUploaded
from services.common.bus import Bus

if TYPE_CHECKING:
    from services.validator.app import ValidatorService

__all__ = ["register"]


def register(bus: Bus, service: ValidatorService, *, durable: str = "validator") -> None:
    """Subscribe ``service`` to ``eaf.model.uploaded`` (durable consumer ``durable``;
    every instance of one deployment uses the same name, so they share the work)."""

    @bus.consumer(ModelUploaded, durable=durable)
    async def on_uploaded(event: ModelUploaded) -> None:
        """Validate an uploaded model version; publish eaf.model.validated or rejected."""
        await service.handle_uploaded(event)
