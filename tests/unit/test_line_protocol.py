"""The ingester's hand-built line protocol is byte for byte what influxdb_client's Point
writes: a replay after the change writes the very same series, fields and timestamps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas.telemetry import DeviceSample, InferenceSample, MetricsBatch, timestamp_ns
from services.ingester.domain import DEVICE, INFERENCE, _line, batch_lines

NAMES = ["plain", "with space", "a,b=c", "ends\\", "tab\there", "new\nline", 'quote"d', "ü-ñ"]
FLOATS = [0.0, 1.0, 2.5, 1e-05, 123456789.125, 1e20, 3.3333333333333335, 7.0]


def _point_lines(batch: MetricsBatch) -> list[str]:
    out = []
    for s in batch.inference:
        tags = {"device": batch.device_id, "model": s.model, "version": s.version}
        fields: dict[str, int | float | str] = {
            "count": s.count,
            "errors": s.errors,
            "latency_p50_ms": float(s.latency_p50_ms),
            "latency_p95_ms": float(s.latency_p95_ms),
            "latency_p99_ms": float(s.latency_p99_ms),
            "latency_max_ms": float(s.latency_max_ms),
            "throughput": float(s.throughput),
        }
        out.append(_line(INFERENCE, tags, fields, timestamp_ns(s.ts)))
    for d in batch.device:
        fields = {
            "cpu_percent": float(d.cpu_percent),
            "memory_bytes": d.memory_bytes,
            "spool_dropped": batch.spool_dropped,
        }
        if d.temperature_c is not None:
            fields["temperature_c"] = float(d.temperature_c)
        out.append(_line(DEVICE, {"device": batch.device_id}, fields, timestamp_ns(d.ts)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_lines_equal_influxdb_clients_point(name: str) -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    inference = tuple(
        InferenceSample(
            ts=start + timedelta(seconds=i),
            model=name,
            version=f"{name}-{i % 2}",
            count=10**12 + i,
            errors=i,
            latency_p50_ms=FLOATS[i],
            latency_p95_ms=FLOATS[-1 - i],
            latency_p99_ms=FLOATS[i] * 3,
            latency_max_ms=FLOATS[i] + 0.1,
            throughput=FLOATS[i] / 3,
        )
        for i in range(len(FLOATS))
    )
    device = tuple(
        DeviceSample(
            ts=start + timedelta(seconds=i),
            cpu_percent=FLOATS[i],
            memory_bytes=2**40 + i,
            temperature_c=None if i % 2 else -FLOATS[i],
        )
        for i in range(len(FLOATS))
    )
    batch = MetricsBatch(
        batch_id=uuid.uuid4(),
        device_id=name.replace("\n", "_"),
        inference=inference,
        device=device,
        spool_dropped=3,
    )
    assert list(batch_lines(batch)) == _point_lines(batch)
