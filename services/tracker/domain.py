"""Pure logic of the tracker: figures from per-interval sums, version comparison.

Definitions (also in ``schemas.stats``): for a set of ``inference`` points,
``count``/``errors`` are sums, ``error_rate = errors / count``, ``throughput = count /
window seconds``, ``latency_pXX_ms = sum(pXX_i * count_i) / sum(count_i)`` (the
count-weighted mean of the intervals' percentiles) and ``latency_max_ms = max(max_i)``.
InfluxDB computes the sums per (version, device); everything above them happens here, so
a version's figures are exactly the same function of its points as a device's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import NormalDist
from typing import cast

import numpy as np

from schemas.stats import (
    DeviceStats,
    MetricComparison,
    ModelStats,
    Verdict,
    VersionComparison,
    VersionStats,
)

__all__ = [
    "MIN_INTERVALS",
    "Estimate",
    "Interval",
    "Sums",
    "compare_intervals",
    "compare_versions",
    "error_rate_change",
    "figures",
    "latency_change",
    "model_stats",
    "order_versions",
    "overall",
    "verdict_of",
]


@dataclass(frozen=True, slots=True)
class Sums:
    """What InfluxDB returns for one (version, device) over the window."""

    version: str
    device: str
    count: int
    errors: int
    #: sum(pXX_i * count_i)
    w50: float
    w95: float
    w99: float
    max_ms: float


def figures(rows: Iterable[Sums], window_seconds: float) -> dict[str, float | int]:
    """The figures of the points behind ``rows`` (see the module docstring)."""
    rows = list(rows)
    count = sum(r.count for r in rows)
    errors = sum(r.errors for r in rows)

    def weighted(total: float) -> float:
        return total / count if count else 0.0

    return {
        "count": count,
        "errors": errors,
        "error_rate": errors / count if count else 0.0,
        "throughput": count / window_seconds,
        "latency_p50_ms": weighted(sum(r.w50 for r in rows)),
        "latency_p95_ms": weighted(sum(r.w95 for r in rows)),
        "latency_p99_ms": weighted(sum(r.w99 for r in rows)),
        "latency_max_ms": max((r.max_ms for r in rows), default=0.0),
    }


def model_stats(
    model: str, start: datetime, end: datetime, rows: Sequence[Sums], ordered: Sequence[str]
) -> ModelStats:
    """Per version (in the order ``ordered`` gives), and per device within it, over
    ``[start, end)``."""
    window = (end - start).total_seconds()
    versions = []
    present = {r.version for r in rows}
    for version in (v for v in ordered if v in present):
        mine = [r for r in rows if r.version == version]
        devices = tuple(
            DeviceStats(device_id=r.device, **figures([r], window))
            for r in sorted(mine, key=lambda r: r.device)
        )
        versions.append(VersionStats(version=version, devices=devices, **figures(mine, window)))
    return ModelStats(model=model, window_start=start, window_end=end, versions=tuple(versions))


def order_versions(
    versions: Iterable[str],
    sequence: Mapping[str, int],
    first_seen: Mapping[str, datetime] | None = None,
) -> list[str]:
    """Oldest first, in the registry's upload order (``sequence``), which is what
    "the version before" means everywhere (a hotfix 1.0.1 uploaded after 2.0.0 comes after
    it). Versions the registry no longer knows (deleted, pruned) come first, by their first
    point, then by name."""
    seen = first_seen or {}
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(
        set(versions),
        key=lambda v: (v in sequence, sequence.get(v, 0), seen.get(v, never), v),
    )


@dataclass(frozen=True, slots=True)
class Interval:
    """One ``inference`` point: what a device reported for one version over one interval."""

    version: str
    device: str
    count: int
    errors: int
    p95_ms: float


#: Intervals each side needs before the latency test may give a verdict: below this the
#: rank statistic's normal approximation is too coarse to trust.
MIN_INTERVALS = 5
#: Bisection stops when the bracket of a shift in log p95 is this narrow (a relative
#: change known to within 1e-6 is more than any verdict needs).
_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Estimate:
    """A change and its confidence interval (``None``: the samples set no bound)."""

    change: float | None
    low: float | None
    high: float | None


def verdict_of(estimate: Estimate, threshold: float) -> Verdict:
    """``regressed`` when the whole interval lies above ``threshold``, ``improved`` when it
    lies below zero, ``unchanged`` when it lies at or below ``threshold``; otherwise the
    samples cannot tell."""
    low, high = estimate.low, estimate.high
    if low is not None and low > threshold:
        return "regressed"
    if high is not None and high < 0:
        return "improved"
    if high is not None and high <= threshold:
        return "unchanged"
    return "insufficient_data"


class _RankStatistic:
    """The van Elteren statistic (Mann-Whitney U summed over devices, each device weighted
    1 / (n + m + 1)) of "log p95 of the version minus ``d``" against the baseline's,
    standardised: under a true shift of ``d`` it is about N(0, 1) and it falls as ``d``
    grows. Devices are strata, so a fleet mix that differs between the two sides does not
    pass for a change.

    All strata are searched at once: each device's values sit on their own stretch of the
    number line (an offset per device wider than anything a shift can span)."""

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        values = np.concatenate([np.concatenate([x, y]) for x, y in pairs])
        spread = float(values.max() - values.min()) + 1.0
        self.lowest = min(float(x.min() - y.max()) for x, y in pairs) - 1.0
        self.highest = max(float(x.max() - y.min()) for x, y in pairs) + 1.0
        gap = 4.0 * spread
        xs, ys, weights, starts, variance, centre = [], [], [], [], 0.0, 0.0
        start = 0
        for s, (x, y) in enumerate(pairs):
            n, m = len(x), len(y)
            w = 1.0 / (n + m + 1)
            xs.append(np.sort(x) + s * gap)  # sorted needles search faster
            ys.append(np.sort(y) + s * gap)
            weights.append(np.full(n, w))
            starts.append(np.full(n, start))
            start += m
            centre += w * n * m / 2
            variance += w * w * n * m * (n + m + 1) / 12
        self.x = np.concatenate(xs)
        self.y = np.concatenate(ys)
        self.w = np.concatenate(weights)
        self.start = np.concatenate(starts)
        self.centre = centre
        self.sd = math.sqrt(variance)
        self.top = centre / self.sd  # the statistic below every pair's difference

    def __call__(self, d: float) -> float:
        shifted = self.x - d
        below = np.searchsorted(self.y, shifted, "left") - self.start
        upto = np.searchsorted(self.y, shifted, "right") - self.start
        u = float(np.dot(self.w, (below + upto) / 2))  # ties count a half
        return (u - self.centre) / self.sd

    def sup_above(self, c: float) -> float | None:
        """The largest shift the statistic still exceeds ``c`` at (None: never)."""
        if self.top <= c:
            return None
        a, b = self.lowest, self.highest
        while b - a > _TOLERANCE:
            mid = (a + b) / 2
            a, b = (mid, b) if self(mid) > c else (a, mid)
        return (a + b) / 2

    def inf_below(self, c: float) -> float | None:
        """The smallest shift the statistic falls below ``c`` at (None: never)."""
        if -self.top >= c:
            return None
        a, b = self.lowest, self.highest
        while b - a > _TOLERANCE:
            mid = (a + b) / 2
            a, b = (a, mid) if self(mid) < c else (mid, b)
        return (a + b) / 2


def latency_change(new: Sequence[Interval], old: Sequence[Interval], *, alpha: float) -> Estimate:
    """The relative change of the intervals' p95 from ``old`` to ``new`` (0.5: 50 % slower),
    with its two-sided ``1 - 2 * alpha`` confidence interval.

    The estimate is the shift in log p95 at which the two sides' ranks balance within each
    device (a stratified Hodges-Lehmann estimate); the interval is every shift the one-sided
    rank tests at ``alpha`` do not reject. A rank test makes no assumption about the
    distribution of interval p95s and a few intervals hit by a busy machine move it little.
    """
    by_device: dict[str, tuple[list[float], list[float]]] = {}
    for side, intervals in enumerate((new, old)):
        for i in intervals:
            if i.count and i.p95_ms > 0:
                by_device.setdefault(i.device, ([], []))[side].append(i.p95_ms)
    pairs = [(np.log(x), np.log(y)) for x, y in by_device.values() if x and y]
    if not pairs:
        return Estimate(None, None, None)
    z = NormalDist().inv_cdf(1 - alpha)
    statistic = _RankStatistic(pairs)
    above, below = statistic.sup_above(0.0), statistic.inf_below(0.0)
    low, high = statistic.sup_above(z), statistic.inf_below(-z)

    def relative(shift: float | None) -> float | None:
        return None if shift is None else math.expm1(shift)

    centre = None if above is None or below is None else (above + below) / 2
    return Estimate(relative(centre), relative(low), relative(high))


def _wilson(errors: float, count: float, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion."""
    denominator = count + z * z
    centre = (errors + z * z / 2) / denominator
    half = z / denominator * math.sqrt(errors * (count - errors) / count + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def _dispersion(intervals: Sequence[Interval]) -> float:
    """How much more the error rate varies between intervals than independent inferences
    would make it (Pearson's chi-square over degrees of freedom, at least 1): errors come
    in bursts (a bad camera, a bad input), and each burst is less news than its count."""
    counts = np.array([i.count for i in intervals], dtype=float)
    errors = np.array([i.errors for i in intervals], dtype=float)
    rate = errors.sum() / counts.sum()
    if len(counts) < 2 or not 0 < rate < 1:
        return 1.0
    chi2 = float((((errors - counts * rate) ** 2) / (counts * rate * (1 - rate))).sum())
    return max(1.0, chi2 / (len(counts) - 1))


def error_rate_change(
    new: Sequence[Interval], old: Sequence[Interval], *, alpha: float
) -> Estimate:
    """The difference of the error rates (``new - old``, 0.01: one point more), with
    Newcombe's hybrid score interval (two Wilson intervals, ``1 - 2 * alpha``), each side's
    counts divided by its dispersion."""
    new = [i for i in new if i.count]
    old = [i for i in old if i.count]
    if not new or not old:
        return Estimate(None, None, None)
    z = NormalDist().inv_cdf(1 - alpha)
    rates, bounds = [], []
    for side in (new, old):
        count = sum(i.count for i in side)
        errors = sum(i.errors for i in side)
        phi = _dispersion(side)
        rates.append(errors / count)
        bounds.append(_wilson(errors / phi, count / phi, z))
    (p1, p2), ((l1, u1), (l2, u2)) = rates, bounds
    diff = p1 - p2
    return Estimate(
        diff,
        diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def _side(intervals: Sequence[Interval]) -> tuple[int, int, float]:
    """Inferences, errors and the count-weighted p95 of one side."""
    count = sum(i.count for i in intervals)
    errors = sum(i.errors for i in intervals)
    p95 = sum(i.p95_ms * i.count for i in intervals) / count if count else 0.0
    return count, errors, p95


def compare_intervals(
    new: Sequence[Interval],
    old: Sequence[Interval],
    *,
    p95_threshold: float,
    error_rate_threshold: float,
    min_inferences: int,
    significance_level: float,
) -> tuple[MetricComparison, MetricComparison]:
    """The verdicts on p95 latency and error rate of ``new`` against ``old``.

    A metric is ``regressed`` only when the change is beyond its threshold for all the
    confidence interval; with fewer than ``min_inferences`` on a side, or fewer than
    ``MIN_INTERVALS`` for latency, it is ``insufficient_data`` whatever the interval says.
    """
    new_count, new_errors, new_p95 = _side(new)
    old_count, old_errors, old_p95 = _side(old)
    enough = new_count >= min_inferences and old_count >= min_inferences
    intervals_enough = sum(1 for i in new if i.count) >= MIN_INTERVALS and (
        sum(1 for i in old if i.count) >= MIN_INTERVALS
    )
    latency = latency_change(new, old, alpha=significance_level)
    errors = error_rate_change(new, old, alpha=significance_level)
    return (
        MetricComparison(
            metric="latency_p95_ms",
            verdict=verdict_of(latency, p95_threshold)
            if enough and intervals_enough
            else "insufficient_data",
            value=new_p95,
            baseline_value=old_p95,
            change=latency.change,
            change_low=latency.low,
            change_high=latency.high,
            threshold=p95_threshold,
        ),
        MetricComparison(
            metric="error_rate",
            verdict=verdict_of(errors, error_rate_threshold) if enough else "insufficient_data",
            value=new_errors / new_count if new_count else 0.0,
            baseline_value=old_errors / old_count if old_count else 0.0,
            change=errors.change,
            change_low=errors.low,
            change_high=errors.high,
            threshold=error_rate_threshold,
        ),
    )


def overall(verdicts: Iterable[Verdict]) -> Verdict:
    """The comparison's verdict: any metric regressed, else any that cannot tell, else any
    improved, else unchanged."""
    found = set(verdicts)
    for verdict in ("regressed", "insufficient_data", "improved"):
        if verdict in found:
            return cast("Verdict", verdict)
    return "unchanged"


def compare_versions(
    model: str,
    ordered: Sequence[str],
    intervals: Sequence[Interval],
    *,
    p95_threshold: float,
    error_rate_threshold: float,
    min_inferences: int,
    significance_level: float,
) -> list[VersionComparison]:
    """Each version against the nearest earlier one that ran on some of the same devices.

    Both sides are measured on the shared devices only, so a fleet whose mix changes does
    not pass for a regression; the verdicts are ``compare_intervals``'.
    """
    by_version: dict[str, list[Interval]] = {v: [] for v in ordered}
    for i in intervals:
        if i.count and i.version in by_version:
            by_version[i.version].append(i)
    devices_of = {v: {i.device for i in found} for v, found in by_version.items()}
    out = []
    for index, version in enumerate(ordered):
        baseline = next(
            (b for b in reversed(ordered[:index]) if devices_of[b] & devices_of[version]), None
        )
        if baseline is None:
            continue
        shared = devices_of[baseline] & devices_of[version]
        new = [i for i in by_version[version] if i.device in shared]
        old = [i for i in by_version[baseline] if i.device in shared]
        latency, errors = compare_intervals(
            new,
            old,
            p95_threshold=p95_threshold,
            error_rate_threshold=error_rate_threshold,
            min_inferences=min_inferences,
            significance_level=significance_level,
        )
        verdict = overall((latency.verdict, errors.verdict))
        out.append(
            VersionComparison(
                model=model,
                version=version,
                baseline_version=baseline,
                devices=tuple(sorted(shared)),
                count=sum(i.count for i in new),
                baseline_count=sum(i.count for i in old),
                latency_p95_ms=latency.value,
                baseline_latency_p95_ms=latency.baseline_value,
                error_rate=errors.value,
                baseline_error_rate=errors.baseline_value,
                regressed=tuple(m.metric for m in (latency, errors) if m.verdict == "regressed"),
                conclusive=verdict != "insufficient_data",
                verdict=verdict,
                intervals=len(new),
                baseline_intervals=len(old),
                significance_level=significance_level,
                metrics=(latency, errors),
            )
        )
    return out
