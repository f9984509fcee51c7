"""The validator's subscribers: ``eaf.model.uploaded`` and its health."""

from __future__ import annotations

from modelkit.probe import SANDBOX_FIX
from schemas.config import NatsConfig
from schemas.events import ModelUploaded
from services.common.bus import ServiceRouter
from services.validator.service import Validator

__all__ = ["create_router"]


def create_router(validator: Validator, nats: NatsConfig) -> ServiceRouter:
    """Hand ``eaf.model.uploaded`` to ``validator`` (durable consumer ``validator.consumer``;
    every instance of one deployment uses the same name, so they share the work).

    While ``validator.problem`` is set no upload is taken: every one would fail for the
    platform's reason, so they wait in the stream until the service is fixed.
    """
    router = ServiceRouter(nats, service="validator")
    router.health(lambda: validator.problem and f"{validator.problem}; {SANDBOX_FIX}")
    if validator.problem:
        return router

    @router.consumer(ModelUploaded, durable=validator.consumer)
    async def on_uploaded(event: ModelUploaded) -> None:
        """Validate an uploaded model version; publish eaf.model.validated or rejected."""
        await validator.handle_uploaded(event)

    return router
