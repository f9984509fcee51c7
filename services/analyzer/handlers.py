"""The analyzer's subscribers: ``eaf.model.validated`` and its health."""

from __future__ import annotations

from modelkit.probe import SANDBOX_FIX
from schemas.config import NatsConfig
from schemas.events import ModelValidated
from services.analyzer.service import Analyzer
from services.common.bus import ServiceRouter

__all__ = ["create_router"]


def create_router(analyzer: Analyzer, nats: NatsConfig) -> ServiceRouter:
    """Hand ``eaf.model.validated`` to ``analyzer`` (durable consumer ``analyzer.consumer``;
    every instance of one deployment uses the same name, so they share the work)."""
    router = ServiceRouter(nats, service="analyzer")
    router.health(lambda: analyzer.problem and f"{analyzer.problem}; {SANDBOX_FIX}")

    @router.consumer(ModelValidated, durable=analyzer.consumer)
    async def on_validated(event: ModelValidated) -> None:
        """Analyse a validated model version; publish eaf.model.analyzed."""
        await analyzer.handle_validated(event)

    return router
