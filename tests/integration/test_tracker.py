"""The tracker against real InfluxDB and NATS: its numbers equal the ones computed
directly from the seeded points, and a regression is announced once."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace

import httpx
import nats
import pytest

from schemas.config import NatsConfig
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
from tests.support.metrics import make_settings, recent
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


async def test_stats_equal_numbers_computed_from_the_seeded_points_and_regression_is_announced_once(
    tmp_path, nats_server, influxdb_server, unique_id
) -> None:
    model = unique_id("model-")
    db = unique_id("db")
    unused = SimpleNamespace(host="127.0.0.1", port=1, username="unused", password="unused")
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=unused, user=unused, unique_id=unique_id,
        nats_url=nats_server.url, influx_url=influxdb_server.url, database=db,
    )  # fmt: skip
    registry_settings = platform_settings(tmp_path / "registry", nats_url=nats_server.url)
    store = ArtifactStore(
        root=registry_settings.model_repository.storage_path, kek=os.urandom(32), chunk_size=4096
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
            assert ("error_rate" in c.regressed) == (new["error_rate"] - base["error_rate"] > 0.02)

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
