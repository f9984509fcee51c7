"""Device-side metrics: histogram percentiles, interval batches, the bounded spool."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_runtime.metrics import LatencyHistogram, MetricsCollector
from edge_runtime.spool import MetricsSpool
from schemas.telemetry import MetricsBatch


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_histogram_percentiles_are_within_one_percent_of_the_exact_ones() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(1.5, 0.8) for _ in range(20_000)]
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    for q in (0.5, 0.95, 0.99):
        exact = exact_percentile(values, q)
        assert h.percentile(q) == pytest.approx(exact, rel=0.011), q
    assert h.max_ms == max(values)
    assert h.count == 20_000


def test_collector_batches_per_model_version_and_resets() -> None:
    t = [datetime(2030, 1, 1, tzinfo=UTC)]
    c = MetricsCollector("dev-1", clock=lambda: t[0], sample_device=False)
    for i in range(100):
        c.record("m", "1", float(i + 1), ok=i % 10 != 0)
    c.record("m", "2", 3.0)
    batch = c.collect()
    assert batch is not None
    by_version = {s.version: s for s in batch.inference}
    assert by_version["1"].count == 100 and by_version["1"].errors == 10
    assert by_version["1"].latency_max_ms == 100.0
    assert by_version["1"].latency_p95_ms == pytest.approx(95, rel=0.011)
    assert by_version["2"].count == 1
    # Nothing ran since: no batch. A clock that steps back still gives a later timestamp.
    assert c.collect() is None
    c.record("m", "1", 1.0)
    t[0] = t[0] - timedelta(seconds=5)
    later = c.collect()
    assert later is not None and later.inference[0].ts > batch.inference[0].ts


def test_batch_with_two_samples_of_one_point_is_refused() -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    sample = {
        "ts": t.isoformat(), "model": "m", "version": "1", "count": 1, "errors": 0,
        "latency_p50_ms": 1, "latency_p95_ms": 1, "latency_p99_ms": 1, "latency_max_ms": 1,
        "throughput": 1,
    }  # fmt: skip
    body = {"batch_id": "00000000-0000-0000-0000-000000000001", "device_id": "d"}
    MetricsBatch.model_validate({**body, "inference": [sample]})
    with pytest.raises(ValidationError, match="may appear once"):
        MetricsBatch.model_validate({**body, "inference": [sample, {**sample, "count": 2}]})
    with pytest.raises(ValidationError):
        MetricsBatch.model_validate({**body, "inference": [{**sample, "errors": 2}]})
    with pytest.raises(ValidationError):
        MetricsBatch.model_validate_json(
            json.dumps({**body, "inference": [{**sample, "latency_p95_ms": float("inf")}]})
        )


def test_spool_keeps_order_drops_oldest_when_full_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = MetricsSpool(path, max_batches=3)
    for i in range(5):
        spool.put(f"b{i}".encode())
    assert [p for _, p in spool.peek()] == [b"b2", b"b3", b"b4"]
    assert spool.dropped == 2
    first_id, _ = spool.peek(1)[0]
    spool.remove(first_id)
    spool.close()
    again = MetricsSpool(path, max_batches=3)
    assert [p for _, p in again.peek()] == [b"b3", b"b4"]
    assert again.dropped == 2
    # The byte bound too: the newest batch always stays.
    small = MetricsSpool(tmp_path / "small.db", max_bytes=10)
    small.put(b"123456")
    small.put(b"abcdef")
    assert [p for _, p in small.peek()] == [b"abcdef"] and small.dropped == 1


async def test_flush_via_keeps_what_an_offline_publisher_could_not_send(tmp_path: Path) -> None:
    from edge_runtime.metrics import MetricsReporter

    collector = MetricsCollector("dev-1", sample_device=False)
    reporter = MetricsReporter(collector, MetricsSpool(tmp_path / "s.db"))
    for i in range(3):
        collector.record("m", "1", float(i + 1))
        assert reporter.tick() is not None
    sent: list[bytes] = []
    offline_after = [1]

    async def publish(payload: bytes) -> bool:
        if len(sent) >= offline_after[0]:
            return False  # as EdgeRuntime.publish_metrics does when disconnected
        sent.append(payload)
        return True

    # The first goes out, then the device is offline: two stay spooled, in order.
    assert await reporter.flush_via(publish) == 1
    assert len(reporter.spool) == 2
    offline_after[0] = 10
    assert await reporter.flush_via(publish) == 2
    assert len(reporter.spool) == 0
    stamps = [MetricsBatch.model_validate_json(p).inference[0].ts for p in sent]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


async def test_a_reporter_ends_when_a_publish_swallowed_its_cancellation(tmp_path: Path) -> None:
    import asyncio

    from edge_runtime.metrics import MetricsReporter

    collector = MetricsCollector("dev-1", sample_device=False)
    reporter = MetricsReporter(collector, MetricsSpool(tmp_path / "s.db"), interval=0.01)
    publishing = asyncio.Event()

    async def publish(payload: bytes) -> bool:
        # What Python 3.11's asyncio.wait_for (inside aiomqtt's publish) does when the
        # PUBACK and a cancellation arrive together: it returns the result.
        publishing.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
        return True

    async def record() -> None:
        while True:
            collector.record("m", "1", 1.0)
            await asyncio.sleep(0.005)

    recording = asyncio.create_task(record())
    running = asyncio.create_task(reporter.run_with(publish))
    await asyncio.wait_for(publishing.wait(), 10)
    running.cancel()
    try:
        # Without the re-raise the loop goes on and this waits forever.
        done, _ = await asyncio.wait({running}, timeout=10)
        assert done and running.cancelled()
    finally:
        recording.cancel()
        running.cancel()
        reporter.spool.close()
