"""Model performance from the tracker: ``GET /api/v1/models/{name}/stats``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from schemas.ids import ModelName, SemVer
from schemas.stats import ModelStats, StatsRequest, TrackerRpc
from services.api.auth import Viewer
from services.api.deps import Ctx

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/models", tags=["stats"])


@router.get(
    "/{model}/stats",
    response_model=ModelStats,
    summary="Inference performance per version and device",
)
async def model_stats(
    ctx: Ctx,
    principal: Viewer,
    model: Annotated[ModelName, Path(description="Model name")],
    window: Annotated[
        float, Query(ge=1, le=10 * 366 * 86400, description="Seconds before `end`")
    ] = 3600.0,
    end: Annotated[datetime | None, Query(description="End of the window (default: now)")] = None,
    version: Annotated[SemVer | None, Query(description="Only this version")] = None,
) -> ModelStats:
    """Count, errors, error rate, throughput and p50/p95/p99/max latency over the window.

    Percentiles over many intervals are the count-weighted mean of the devices' interval
    percentiles (see docs/metrics.md).
    """
    request = StatsRequest(model=model, window_seconds=window, end=end, version=version)
    return await ctx.call(TrackerRpc.STATS, request)
