"""The tracker's subscribers: ``eaf.rpc.tracker.*`` (``schemas.stats.TrackerRpc``)."""

from __future__ import annotations

from schemas.config import NatsConfig
from schemas.stats import EvaluateReply, EvaluateRequest, ModelStats, StatsRequest, TrackerRpc
from services.common.bus import ServiceRouter
from services.tracker.service import Tracker

__all__ = ["create_router"]


def create_router(tracker: Tracker, nats: NatsConfig) -> ServiceRouter:
    """The tracker's request/reply subjects and its health, answered by ``tracker``."""
    router = ServiceRouter(nats, service="tracker")
    router.health()

    @router.rpc(TrackerRpc.STATS)
    async def stats(request: StatsRequest) -> ModelStats:
        """A model's performance per version and device over a window."""
        return await tracker.stats(request)

    @router.rpc(TrackerRpc.EVALUATE)
    async def evaluate(request: EvaluateRequest) -> EvaluateReply:
        """Compare each version with the one before it now; publish regressions."""
        return await tracker.evaluate(request)

    return router
