"""The tracker's verdict: "regressed" only when the samples show a change beyond the
threshold, "insufficient_data" when they cannot tell (docs/tracker.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.stats import MetricComparison
from schemas.telemetry import InferenceSample
from services.tracker.domain import (
    MIN_INTERVALS,
    Interval,
    compare_intervals,
    compare_versions,
    error_rate_change,
    latency_change,
)
from tests.support.metrics import noisy_samples

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def intervals(
    samples: list[InferenceSample], *, version: str, device: str = "cam-1"
) -> list[Interval]:
    return [Interval(version, device, s.count, s.errors, s.latency_p95_ms) for s in samples]


def side(seed: int, version: str, n: int, *, device: str = "cam-1", **noise) -> list[Interval]:
    samples = noisy_samples(np.random.default_rng(seed), T0, n, version=version, **noise)
    return intervals(samples, version=version, device=device)


def judge(
    new: list[Interval], old: list[Interval], alpha: float = 0.01
) -> tuple[MetricComparison, MetricComparison]:
    """The defaults' thresholds: 20 % on p95, 2 points on error rate, 100 inferences."""
    return compare_intervals(
        new,
        old,
        p95_threshold=0.2,
        error_rate_threshold=0.02,
        min_inferences=100,
        significance_level=alpha,
    )


def verdicts(new: list[Interval], old: list[Interval], alpha: float) -> dict[str, str]:
    return {m.metric: m.verdict for m in judge(new, old, alpha)}


def test_two_equal_versions_under_noise_are_not_called_regressed() -> None:
    # 200 seeded pairs of the same noisy model (load bursts, bursty errors at 2 %),
    # 20 intervals of about 10 inferences a side: what `make demo` sees on a busy machine.
    alpha = 0.01
    trials = 200
    regressed = 0
    for seed in range(trials):
        new = side(2 * seed, "new", 20, error_rate=0.02)
        old = side(2 * seed + 1, "old", 20, error_rate=0.02)
        regressed += "regressed" in verdicts(new, old, alpha).values()
    # The level bounds the rate even for a true change right at the threshold; for no
    # change at all, none is expected.
    assert regressed <= alpha * trials
    assert regressed == 0


def test_a_slowdown_right_at_the_threshold_is_called_regressed_at_most_at_the_level() -> None:
    # The hardest case for the bound: the version really is 20 % slower, exactly the
    # threshold. A verdict on the point estimate alone would say "regressed" half the time.
    alpha = 0.05
    trials = 300
    regressed = 0
    for seed in range(trials):
        new = side(2 * seed, "new", 15, slowdown=1.2)
        old = side(2 * seed + 1, "old", 15)
        regressed += verdicts(new, old, alpha)["latency_p95_ms"] == "regressed"
    # Binomial slack of three standard deviations above alpha * trials (= 15).
    assert regressed <= alpha * trials + 3 * (trials * alpha * (1 - alpha)) ** 0.5


@pytest.mark.parametrize("seed", range(10))
def test_a_version_twice_as_slow_is_regressed(seed) -> None:
    new = side(2 * seed, "new", 20, slowdown=2.0)
    old = side(2 * seed + 1, "old", 20)
    latency, _ = judge(new, old)
    assert latency.verdict == "regressed"
    assert latency.change_low is not None and latency.change is not None
    assert 0.2 < latency.change_low < latency.change < (latency.change_high or float("inf"))
    # (The count-weighted p95 figures need not agree: one load burst in a few intervals
    # can make the baseline's figure the larger one. The rank test is not moved by that.)


def test_a_faster_version_is_improved_and_a_slightly_slower_one_unchanged() -> None:
    old = side(1, "old", 60)
    assert verdicts(side(2, "new", 60, slowdown=0.5), old, 0.01)["latency_p95_ms"] == "improved"
    assert verdicts(side(3, "new", 60, slowdown=1.05), old, 0.01)["latency_p95_ms"] == "unchanged"


def test_too_few_inferences_or_intervals_give_insufficient_data() -> None:
    # A 2x slowdown, but 3 intervals of about 10 inferences: fewer than min_inferences.
    few = verdicts(side(1, "new", 3, slowdown=2.0), side(2, "old", 3), 0.01)
    assert few == {"latency_p95_ms": "insufficient_data", "error_rate": "insufficient_data"}
    # Plenty of inferences but fewer intervals than the rank test needs.
    busy = verdicts(
        side(3, "new", MIN_INTERVALS - 1, rate=500, slowdown=2.0),
        side(4, "old", MIN_INTERVALS - 1, rate=500),
        0.01,
    )
    assert busy["latency_p95_ms"] == "insufficient_data"


def test_error_rate_verdicts() -> None:
    old = side(1, "old", 50, rate=40, error_rate=0.01)
    worse = verdicts(side(2, "new", 50, rate=40, error_rate=0.10), old, 0.01)
    assert worse["error_rate"] == "regressed"
    assert verdicts(side(3, "new", 50, rate=40, error_rate=0.01), old, 0.01)["error_rate"] in {
        "unchanged",
        "improved",
    }
    # No errors at all on 150 inferences a side does not prove an error rate below 2 %.
    quiet = verdicts(side(4, "new", 15), side(5, "old", 15), 0.01)
    assert quiet["error_rate"] == "insufficient_data"


def test_errors_in_bursts_widen_the_interval() -> None:
    # The same totals (100 errors in 2000 inferences a side), spread evenly or all in two
    # intervals: bursts carry less information, so the interval is wider.
    def even(version: str, errors: int) -> list[Interval]:
        return [Interval(version, "d", 100, errors // 20, 1.0) for _ in range(20)]

    def bursty(version: str, errors: int) -> list[Interval]:
        return [Interval(version, "d", 100, errors // 2 if i < 2 else 0, 1.0) for i in range(20)]

    spread = error_rate_change(even("n", 200), even("o", 100), alpha=0.01)
    burst = error_rate_change(bursty("n", 200), bursty("o", 100), alpha=0.01)
    assert spread.change == burst.change == pytest.approx(0.05)
    assert spread.low is not None and burst.low is not None
    assert burst.low < spread.low
    assert spread.high is not None and burst.high is not None and burst.high > spread.high


def test_a_changed_device_mix_is_not_a_regression() -> None:
    # cam-2 is three times slower hardware. The baseline ran mostly on cam-1, the new
    # version mostly on cam-2: the pooled figure is far worse, the version is not.
    old = side(1, "old", 40, device="cam-1") + side(2, "old", 8, device="cam-2", slowdown=3)
    new = side(3, "new", 8, device="cam-1") + side(4, "new", 40, device="cam-2", slowdown=3)
    latency, _ = judge(new, old)
    assert latency.value > 1.5 * latency.baseline_value
    assert latency.verdict != "regressed"
    assert latency.change_low is not None and latency.change_low < 0.2


def test_latency_change_estimates_a_pure_scaling() -> None:
    rng = np.random.default_rng(7)
    p95 = rng.lognormal(0, 0.5, 200)
    old = [Interval("o", "d", 10, 0, float(v)) for v in p95]
    new = [Interval("n", "d", 10, 0, float(v) * 1.5) for v in p95]
    estimate = latency_change(new, old, alpha=0.01)
    assert estimate.change == pytest.approx(0.5, abs=0.05)
    assert estimate.low is not None and estimate.high is not None
    assert estimate.low < 0.5 < estimate.high


def test_compare_versions_reports_the_figures_and_the_verdict() -> None:
    rows = (
        side(1, "1.0.0", 20)
        + side(2, "1.0.0", 20, device="cam-2")
        + side(3, "1.1.0", 20, slowdown=2.0)
        + side(4, "1.2.0", 2)
    )
    first, second = compare_versions(
        "m",
        ["1.0.0", "1.1.0", "1.2.0"],
        rows,
        p95_threshold=0.2,
        error_rate_threshold=0.02,
        min_inferences=100,
        significance_level=0.01,
    )
    # 1.1.0 ran on cam-1 only: compared there only.
    assert (first.version, first.baseline_version, first.devices) == ("1.1.0", "1.0.0", ("cam-1",))
    assert (first.intervals, first.baseline_intervals) == (20, 20)
    assert first.verdict == "regressed" and first.regressed == ("latency_p95_ms",)
    assert first.conclusive and first.significance_level == 0.01
    assert first.count == sum(i.count for i in rows if i.version == "1.1.0")
    latency = first.metrics[0]
    assert (latency.value, latency.baseline_value) == (
        first.latency_p95_ms,
        first.baseline_latency_p95_ms,
    )
    assert second.verdict == "insufficient_data"
    assert not second.conclusive and second.regressed == ()
