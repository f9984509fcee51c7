"""The tracker against real InfluxDB and NATS: its numbers equal the ones computed
directly from the seeded points, a regression is announced once, and only when the points
show it."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import nats
import numpy as np
import pytest

from schemas.config import NatsConfig, Settings
from schemas.events import ModelPerformanceRegressed
from schemas.registry import CreateVersionRequest, RegistryRpc
from schemas.stats import (
    EvaluateRequest,
    StatsRequest,
    TrackerRpc,
)
from schemas.telemetry import InferenceSample, MetricsBatch
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.ingester.domain import batch_lines
from services.registry import create_service as create_registry
from services.tracker import create_service
from tests.support.metrics import make_settings, noisy_samples, recent
from tests.support.settings import platform_settings


async def upload(bus: Bus, store: ArtifactStore, model: str, version: str) -> None:
    async def one() -> AsyncIterator[bytes]:
        yield os.urandom(100)

    stored = (await store.put(one())).info
    request = CreateVersionRequest(
        model=model, version=version, artifact_id=stored.artifact_id, size_bytes=stored.size
    )
    await bus.call(RegistryRpc.CREATE_VERSION, request)


def seed(
    model: str, start, plan: dict[str, dict[str, float]]
) -> dict[tuple[str, str], list[InferenceSample]]:
    """version -> {device: latency scale}; 30 one-minute intervals each, random figures."""
    rng = random.Random(42)
    out: dict[tuple[str, str], list[InferenceSample]] = {}
    for version, devices in plan.items():
        for device, scale in devices.items():
            samples = []
            for i in range(30):
                count = rng.randint(0, 200)
                p50 = rng.uniform(1, 5) * scale
                samples.append(
                    InferenceSample(
                        ts=start + timedelta(minutes=i, seconds=rng.randint(0, 59)),
                        model=model,
                        version=version,
                        count=count,
                        errors=rng.randint(0, count // 10) if version == "1.10.0" else 0,
                        latency_p50_ms=p50,
                        latency_p95_ms=p50 * rng.uniform(1.5, 2.5),
                        latency_p99_ms=p50 * rng.uniform(2.5, 4),
                        latency_max_ms=p50 * rng.uniform(4, 8),
                        throughput=count / 60,
                    )
                )
            out[(version, device)] = samples
    return out


def expected(samples: list[InferenceSample], window: float) -> dict[str, float]:
    """The documented definitions, straight from the points."""
    count = sum(s.count for s in samples)
    errors = sum(s.errors for s in samples)
    return {
        "count": count,
        "errors": errors,
        "error_rate": errors / count,
        "throughput": count / window,
        "latency_p50_ms": sum(s.latency_p50_ms * s.count for s in samples) / count,
        "latency_p95_ms": sum(s.latency_p95_ms * s.count for s in samples) / count,
        "latency_p99_ms": sum(s.latency_p99_ms * s.count for s in samples) / count,
        "latency_max_ms": max(s.latency_max_ms for s in samples),
    }


def assert_figures(got: object, want: dict[str, float]) -> None:
    for key, value in want.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-9), key


def tracker_and_registry(
    tmp_path: Path, nats_server: Any, influxdb_server: Any, unique_id: Any, db: str
) -> tuple[Settings, Settings, ArtifactStore]:
    """The tracker's settings (no broker: it reads InfluxDB and the bus), a registry's
    settings beside it, and a store for the artifacts the tests register."""
    unused = SimpleNamespace(host="127.0.0.1", port=1, username="unused", password="unused")
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=unused, user=unused, unique_id=unique_id,
        nats_url=nats_server.url, influx_url=influxdb_server.url, database=db,
    )  # fmt: skip
    registry_settings = platform_settings(tmp_path / "registry", nats_url=nats_server.url)
    store = ArtifactStore(
        root=registry_settings.model_repository.storage_path, kek=os.urandom(32), chunk_size=4096
    )
    return settings, registry_settings, store


async def test_stats_equal_numbers_computed_from_the_seeded_points_and_regression_is_announced_once(
    tmp_path, nats_server, influxdb_server, unique_id
) -> None:
    model = unique_id("model-")
    db = unique_id("db")
    settings, registry_settings, store = tracker_and_registry(
        tmp_path, nats_server, influxdb_server, unique_id, db
    )
    start = recent(minutes=60)
    # 1.9.0 on three devices; 1.10.0 on two of them, about twice as slow and with errors.
    # The registry knows 1.9.0 as the older upload: "1.10.0" < "1.9.0" as strings must not
    # make 1.10.0 the baseline.
    plan = {
        "1.9.0": {"a": 1.0, "b": 1.0, "c": 1.0},
        "1.10.0": {"a": 2.0, "b": 2.0},
    }
    seeded = seed(model, start, plan)
    lines = [
        line
        for (version, device), samples in seeded.items()
        for line in batch_lines(
            MetricsBatch(batch_id=uuid.uuid4(), device_id=device, inference=tuple(samples))
        )
    ]
    async with httpx.AsyncClient(base_url=influxdb_server.url) as http:
        (await http.post("/query", data={"q": f'CREATE DATABASE "{db}"'})).raise_for_status()
        r = await http.post(
            "/write", params={"db": db, "precision": "ns"}, content="\n".join(lines)
        )
        assert r.status_code == 204, r.text

    end = start + timedelta(minutes=40)
    window = 40 * 60.0
    received: list[ModelPerformanceRegressed] = []
    nc = await nats.connect(nats_server.url)

    async def on_event(msg) -> None:
        event = ModelPerformanceRegressed.model_validate_json(msg.data)
        if event.model == model:
            received.append(event)

    await nc.subscribe(ModelPerformanceRegressed.SUBJECT, cb=on_event)
    try:
        async with (
            create_registry(registry_settings),
            create_service(settings),
            Bus(NatsConfig(url=nats_server.url), service="t") as bus,
        ):
            for version in plan:  # uploaded in this order: sequence 1, then 2
                await upload(bus, store, model, version)
            stats = await bus.call(
                TrackerRpc.STATS,
                StatsRequest(model=model, window_seconds=window, end=end),
            )
            assert [v.version for v in stats.versions] == ["1.9.0", "1.10.0"]
            for v in stats.versions:
                mine = [s for (ver, _), ss in seeded.items() if ver == v.version for s in ss]
                assert_figures(v, expected(mine, window))
                assert [d.device_id for d in v.devices] == sorted(plan[v.version])
                for d in v.devices:
                    assert_figures(d, expected(seeded[(v.version, d.device_id)], window))

            # A window that holds no points of the model: empty, not an error.
            empty = await bus.call(
                TrackerRpc.STATS,
                StatsRequest(model=model, window_seconds=60, end=start),
            )
            assert empty.versions == ()

            reply = await bus.call(
                TrackerRpc.EVALUATE,
                EvaluateRequest(model=model, window_seconds=window, end=end),
            )
            (c,) = reply.comparisons
            assert (c.version, c.baseline_version, c.devices) == ("1.10.0", "1.9.0", ("a", "b"))
            # Compared on the shared devices only: device c does not count for 1.0.0.
            base = expected(seeded[("1.9.0", "a")] + seeded[("1.9.0", "b")], window)
            new = expected(seeded[("1.10.0", "a")] + seeded[("1.10.0", "b")], window)
            assert c.baseline_latency_p95_ms == pytest.approx(base["latency_p95_ms"], rel=1e-9)
            assert c.latency_p95_ms == pytest.approx(new["latency_p95_ms"], rel=1e-9)
            assert "latency_p95_ms" in c.regressed
            assert c.verdict == "regressed" and c.conclusive
            latency, errors = c.metrics
            assert latency.change_low is not None and latency.change_low > 0.2
            assert errors.change == pytest.approx(new["error_rate"] - base["error_rate"])
            assert ("error_rate" in c.regressed) == (errors.verdict == "regressed")
            assert (c.intervals, c.baseline_intervals) == (
                sum(1 for d in "ab" for s in seeded[("1.10.0", d)] if s.count),
                sum(1 for d in "ab" for s in seeded[("1.9.0", d)] if s.count),
            )

            # Asked again: the same verdict, but no second announcement.
            await bus.call(
                TrackerRpc.EVALUATE,
                EvaluateRequest(model=model, window_seconds=window, end=end),
            )
            await asyncio.sleep(1.0)
            p95 = [e for e in received if e.metric == "latency_p95_ms"]
            assert len(p95) == 1
            assert (p95[0].version, p95[0].baseline_version) == ("1.10.0", "1.9.0")
            assert p95[0].value == pytest.approx(new["latency_p95_ms"], rel=1e-9)
            assert len(received) == len(c.regressed)
    finally:
        await nc.close()


async def write_points(url: str, db: str, lines: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        (await http.post("/query", data={"q": f'CREATE DATABASE "{db}"'})).raise_for_status()
        r = await http.post(
            "/write", params={"db": db, "precision": "ns"}, content="\n".join(lines)
        )
        assert r.status_code == 204, r.text


async def test_the_verdict_through_influxdb_noise_is_no_regression_2x_is_too_few_is_no_verdict(
    tmp_path, nats_server, influxdb_server, unique_id
) -> None:
    db = unique_id("db")
    settings, registry_settings, store = tracker_and_registry(
        tmp_path, nats_server, influxdb_server, unique_id, db
    )
    start = recent(minutes=60)
    # model -> (intervals a side, slowdown of 2.0.0): 20 seeded pairs of the same noisy
    # model, one twice as slow, one with too few inferences (3 intervals of about 10).
    plan = {unique_id(f"same{k}-"): (20, 1.0) for k in range(20)}
    slow, few = unique_id("slow-"), unique_id("few-")
    plan[slow] = (20, 2.0)
    plan[few] = (3, 2.0)
    rng = np.random.default_rng(2026)
    seeded: dict[tuple[str, str], list[InferenceSample]] = {}
    for model, (n, slowdown) in plan.items():
        seeded[(model, "1.0.0")] = noisy_samples(
            rng, start, n, model=model, version="1.0.0", error_rate=0.02
        )
        seeded[(model, "2.0.0")] = noisy_samples(
            rng, start + timedelta(minutes=10), n, model=model, version="2.0.0",
            slowdown=slowdown, error_rate=0.02,
        )  # fmt: skip
    lines = [
        line
        for samples in seeded.values()
        for line in batch_lines(
            MetricsBatch(batch_id=uuid.uuid4(), device_id="cam-1", inference=tuple(samples))
        )
    ]
    await write_points(influxdb_server.url, db, lines)
    received: list[ModelPerformanceRegressed] = []
    nc = await nats.connect(nats_server.url)

    async def on_event(msg) -> None:
        event = ModelPerformanceRegressed.model_validate_json(msg.data)
        if event.model in plan:
            received.append(event)

    await nc.subscribe(ModelPerformanceRegressed.SUBJECT, cb=on_event)
    end = start + timedelta(minutes=40)
    try:
        async with (
            create_registry(registry_settings),
            create_service(settings),
            Bus(NatsConfig(url=nats_server.url), service="t") as bus,
        ):
            verdicts = {}
            for model in plan:
                for version in ("1.0.0", "2.0.0"):
                    await upload(bus, store, model, version)
                reply = await bus.call(
                    TrackerRpc.EVALUATE,
                    EvaluateRequest(model=model, window_seconds=2400, end=end),
                )
                (verdicts[model],) = reply.comparisons
            await asyncio.sleep(1.0)
    finally:
        await nc.close()

    same = [c for model, c in verdicts.items() if model.startswith("same")]
    assert not [c for c in same if c.verdict == "regressed"]
    assert all(c.regressed == () for c in same)

    c = verdicts[slow]
    assert (c.verdict, c.regressed, c.conclusive) == ("regressed", ("latency_p95_ms",), True)
    assert (c.intervals, c.baseline_intervals, c.significance_level) == (20, 20, 0.01)
    assert c.count == sum(s.count for s in seeded[(slow, "2.0.0")])
    assert c.baseline_count == sum(s.count for s in seeded[(slow, "1.0.0")])
    latency = c.metrics[0]
    assert latency.change_low is not None and latency.change_low > 0.2

    assert verdicts[few].verdict == "insufficient_data"
    assert not verdicts[few].conclusive and verdicts[few].regressed == ()

    # Announced: the 2x slower version, and nothing else.
    (event,) = received
    assert (event.model, event.version, event.baseline_version) == (slow, "2.0.0", "1.0.0")
    assert (event.metric, event.value, event.baseline_value) == (
        "latency_p95_ms",
        latency.value,
        latency.baseline_value,
    )
    assert (event.change, event.change_low, event.change_high) == (
        latency.change,
        latency.change_low,
        latency.change_high,
    )
    assert (event.count, event.baseline_count, event.intervals, event.baseline_intervals) == (
        c.count,
        c.baseline_count,
        20,
        20,
    )
    assert event.significance_level == 0.01
