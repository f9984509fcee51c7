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
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from schemas.base import WireModel, between
from schemas.rpc import Rpc

__all__ = [
    "DeviceStats",
    "EvaluateReply",
    "EvaluateRequest",
    "Metric",
    "MetricComparison",
    "ModelStats",
    "PerformanceFigures",
    "StatsRequest",
    "TrackerRpc",
    "Verdict",
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


#: The metrics a comparison judges.
Metric = Literal["latency_p95_ms", "error_rate"]
#: ``regressed``: worse than the threshold, beyond doubt at ``significance_level``;
#: ``unchanged``: no worse than the threshold, beyond the same doubt; ``improved``: better,
#: beyond doubt; ``insufficient_data``: the samples cannot tell yet (docs/tracker.md).
Verdict = Literal["improved", "unchanged", "regressed", "insufficient_data"]


class MetricComparison(WireModel):
    """One metric of a comparison and its verdict.

    ``change`` is the estimate the verdict rests on, ``change_low``..``change_high`` its
    confidence interval (two-sided, ``1 - 2 * significance_level``; ``None``: the samples set
    no bound). For ``latency_p95_ms`` the change is relative (0.5 = 50 % slower): the
    typical ratio of an interval's p95 on the version to one on the baseline on the same
    device (Hodges-Lehmann). For ``error_rate`` it is the difference of the error rates
    (0.01 = one percentage point more). ``value`` and ``baseline_value`` are the figures
    of ``ModelStats``; ``threshold`` is the configured one for this metric.
    """

    metric: Metric
    verdict: Verdict
    value: float
    baseline_value: float
    change: float | None = None
    change_low: float | None = None
    change_high: float | None = None
    threshold: float


class VersionComparison(WireModel):
    """One version against its baseline, over the devices that ran both."""

    model: str
    version: str
    baseline_version: str
    devices: tuple[str, ...]
    #: Inferences on each side.
    count: int
    baseline_count: int
    latency_p95_ms: float
    baseline_latency_p95_ms: float
    error_rate: float
    baseline_error_rate: float
    #: Metrics judged ``regressed``: ``latency_p95_ms``, ``error_rate``.
    regressed: tuple[str, ...] = ()
    #: False when the verdict is ``insufficient_data``.
    conclusive: bool = True
    #: The worst of the metrics' verdicts: regressed, then insufficient_data, improved, unchanged.
    verdict: Verdict = "unchanged"
    #: Intervals (``inference`` points) on each side.
    intervals: int = 0
    baseline_intervals: int = 0
    #: One-sided: the chance, at most, of a verdict beyond a bound that does not hold.
    significance_level: float = 0.01
    metrics: tuple[MetricComparison, ...] = ()


class EvaluateReply(WireModel):
    comparisons: tuple[VersionComparison, ...] = ()


class TrackerRpc:
    """What the tracker answers on ``eaf.rpc.tracker.*``."""

    STATS = Rpc.of(
        "tracker", "stats", StatsRequest, ModelStats, "A model's performance per version"
    )
    EVALUATE = Rpc.of("tracker", "evaluate", EvaluateRequest, EvaluateReply, "Compare versions now")
