"""Model performance as the tracker reports it (``eaf.rpc.tracker.*``).

How the figures are defined (docs/metrics.md says why): over a window, for a set of
``inference`` points (one per device, model, version and interval),

- ``count`` and ``errors`` are sums; ``error_rate = errors / count`` (0 without inferences);
- ``throughput = count / window seconds`` (inferences per second over the whole window);
- ``latency_pXX_ms`` is the count-weighted mean of the intervals' pXX:
  ``sum(pXX_i * count_i) / sum(count_i)`` (0 without inferences);
- ``latency_max_ms`` is the maximum of the intervals' maxima.

A version's figures apply these to all its points; a device's to that device's points.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, Field

from schemas.base import WireModel, between
from schemas.rpc import Rpc

__all__ = [
    "DeviceStats",
    "EvaluateReply",
    "EvaluateRequest",
    "ModelStats",
    "PerformanceFigures",
    "StatsRequest",
    "TrackerRpc",
    "VersionComparison",
    "VersionStats",
]


Name = Annotated[str, Field(min_length=1, max_length=128)]
#: At most the longest retention we support (10 years), at least one second.
WindowSeconds = Annotated[float, Field(ge=1, le=10 * 366 * 86400)]
#: Ends of a window that InfluxDB can query: its time range, less the longest window.
WindowEnd = Annotated[
    AwareDatetime,
    between(
        datetime(1688, 1, 1, tzinfo=UTC),
        datetime(2262, 4, 11, tzinfo=UTC),
        "end must lie between 1688-01-01 and 2262-04-11 (what InfluxDB stores)",
    ),
]


class StatsRequest(WireModel):
    """Ask for a model's performance over ``[end - window_seconds, end)``."""

    model: Name
    window_seconds: WindowSeconds = 3600.0
    #: End of the window; now when omitted.
    end: WindowEnd | None = None
    #: Only this version; every version seen in the window when omitted.
    version: Name | None = None


class PerformanceFigures(WireModel):
    """The figures of one set of points (see the module's definitions)."""

    count: int
    errors: int
    error_rate: float
    throughput: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float


class DeviceStats(PerformanceFigures):
    device_id: str


class VersionStats(PerformanceFigures):
    version: str
    devices: tuple[DeviceStats, ...] = ()


class ModelStats(WireModel):
    """Reply of ``eaf.rpc.tracker.stats`` and body of ``GET /models/{name}/stats``."""

    model: str
    window_start: AwareDatetime
    window_end: AwareDatetime
    versions: tuple[VersionStats, ...] = ()


class EvaluateRequest(WireModel):
    """Compare each version of ``model`` with the one before it, now."""

    model: Name
    #: Defaults to ``performance_tracking.evaluation_window``.
    window_seconds: WindowSeconds | None = None
    end: AwareDatetime | None = None


class VersionComparison(WireModel):
    """One version against its baseline, over the devices that ran both."""

    model: str
    version: str
    baseline_version: str
    devices: tuple[str, ...]
    count: int
    baseline_count: int
    latency_p95_ms: float
    baseline_latency_p95_ms: float
    error_rate: float
    baseline_error_rate: float
    #: Metrics that worsened past their thresholds: ``latency_p95_ms``, ``error_rate``.
    regressed: tuple[str, ...] = ()
    #: False when either side had fewer than ``min_inferences``: no verdict was made.
    conclusive: bool = True


class EvaluateReply(WireModel):
    comparisons: tuple[VersionComparison, ...] = ()


class TrackerRpc:
    """What the tracker answers on ``eaf.rpc.tracker.*``."""

    STATS = Rpc.of(
        "tracker", "stats", StatsRequest, ModelStats, "A model's performance per version"
    )
    EVALUATE = Rpc.of("tracker", "evaluate", EvaluateRequest, EvaluateReply, "Compare versions now")
