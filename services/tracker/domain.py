"""Pure logic of the tracker: figures from per-interval sums, version comparison.

Definitions (also in ``schemas.stats``): for a set of ``inference`` points,
``count``/``errors`` are sums, ``error_rate = errors / count``, ``throughput = count /
window seconds``, ``latency_pXX_ms = sum(pXX_i * count_i) / sum(count_i)`` (the
count-weighted mean of the intervals' percentiles) and ``latency_max_ms = max(max_i)``.
InfluxDB computes the sums per (version, device); everything above them happens here, so
a version's figures are exactly the same function of its points as a device's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.stats import DeviceStats, ModelStats, VersionComparison, VersionStats

__all__ = ["Sums", "compare_versions", "figures", "model_stats", "order_versions"]


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


def compare_versions(
    model: str,
    ordered: Sequence[str],
    rows: Sequence[Sums],
    *,
    window_seconds: float,
    p95_threshold: float,
    error_rate_threshold: float,
    min_inferences: int,
) -> list[VersionComparison]:
    """Each version against the nearest earlier one that ran on some of the same devices.

    Both sides are measured on the shared devices only, so a fleet whose mix changes does
    not pass for a regression. A side with fewer than ``min_inferences`` gives no verdict.
    """
    devices_of = {v: {r.device for r in rows if r.version == v and r.count} for v in ordered}
    out = []
    for i, version in enumerate(ordered):
        baseline = next(
            (b for b in reversed(ordered[:i]) if devices_of[b] & devices_of[version]), None
        )
        if baseline is None:
            continue
        shared = devices_of[baseline] & devices_of[version]
        new = figures(
            [r for r in rows if r.version == version and r.device in shared], window_seconds
        )
        old = figures(
            [r for r in rows if r.version == baseline and r.device in shared], window_seconds
        )
        conclusive = new["count"] >= min_inferences and old["count"] >= min_inferences
        regressed: list[str] = []
        if conclusive:
            if new["latency_p95_ms"] > old["latency_p95_ms"] * (1 + p95_threshold):
                regressed.append("latency_p95_ms")
            if new["error_rate"] - old["error_rate"] > error_rate_threshold:
                regressed.append("error_rate")
        out.append(
            VersionComparison(
                model=model,
                version=version,
                baseline_version=baseline,
                devices=tuple(sorted(shared)),
                count=int(new["count"]),
                baseline_count=int(old["count"]),
                latency_p95_ms=float(new["latency_p95_ms"]),
                baseline_latency_p95_ms=float(old["latency_p95_ms"]),
                error_rate=float(new["error_rate"]),
                baseline_error_rate=float(old["error_rate"]),
                regressed=tuple(regressed),
                conclusive=conclusive,
            )
        )
    return out
