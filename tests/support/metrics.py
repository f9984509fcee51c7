"""Helpers shared by the metrics tests: settings for an ingester on the test servers,
simulated devices' batches, enrolment, and InfluxDB queries."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import numpy as np
from prometheus_client import Counter

from edge_runtime.metrics import LatencyHistogram
from edgeaiforge_stack.servers import free_port
from schemas.config import Settings
from schemas.events import DeviceEnrolled
from schemas.telemetry import InferenceSample, MetricsBatch
from services.common.bus import Bus
from tests.support.settings import platform_settings

PREFIX = "eaf/v1"


def make_settings(
    *,
    tmp_path: Path,
    mosquitto: Any,
    user: Any,
    unique_id: Callable[[str], str],
    influx_url: str,
    nats_url: str = "nats://127.0.0.1:1",
    database: str | None = None,
    metrics_port: int | None = None,
    **ingester: Any,
) -> Settings:
    """Settings of one ingester (and tracker) on the test servers.

    ``mosquitto`` is the broker fixture and ``user`` the ingester's MQTT account (anything
    with ``username`` and ``password``); the database, client id and shared group get
    fresh names from ``unique_id``. The default ``nats_url`` is for tests without a bus.
    """
    client_id = unique_id("ingester-")
    group = unique_id("g")
    database = database or unique_id("db")
    return platform_settings(
        tmp_path,
        nats_url=nats_url,
        database_file="tracker.db",
        mqtt_user=(user.username, user.password),
        nats={"ack_wait": 5.0},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "keepalive": 10},
        influxdb={"url": influx_url, "database": database, "flush_interval": 0.2},
        ingester={
            "spool_path": str(tmp_path / f"{client_id}.db"),
            "metrics_port": free_port() if metrics_port is None else metrics_port,
            "client_id": client_id,
            "shared_group": group,
            **ingester,
        },
    )


def settings_toml(settings: Settings) -> str:
    """The settings as a TOML file for ``python -m services.<name> --config``."""
    lines: list[str] = []
    data = settings.model_dump(mode="json")
    for section in ("nats", "mqtt", "influxdb", "ingester", "database", "performance_tracking"):
        lines.append(f"[{section}]")
        for key, value in data[section].items():
            if value is None:
                continue
            if key == "password":
                value = getattr(settings, section).password.get_secret_value()
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def batch(
    device_id: str,
    start: datetime,
    n: int,
    *,
    model: str = "m",
    version: str = "1.0.0",
    step: timedelta = timedelta(seconds=1),
    seed: int = 0,
) -> MetricsBatch:
    """``n`` inference samples of one device at ``start``, ``start + step``, ..."""
    samples = []
    for i in range(n):
        k = seed + i
        count = 10 + k % 7
        samples.append(
            InferenceSample(
                ts=start + i * step,
                model=model,
                version=version,
                count=count,
                errors=k % 3 if k % 5 == 0 else 0,
                latency_p50_ms=1.0 + (k % 11) / 10,
                latency_p95_ms=2.0 + (k % 13) / 10,
                latency_p99_ms=3.0 + (k % 17) / 10,
                latency_max_ms=5.0 + (k % 19) / 10,
                throughput=count / step.total_seconds(),
            )
        )
    return MetricsBatch(batch_id=uuid.uuid4(), device_id=device_id, inference=tuple(samples))


def noisy_samples(
    rng: np.random.Generator,
    start: datetime,
    intervals: int,
    *,
    model: str = "m",
    version: str = "1.0.0",
    rate: float = 10.0,
    slowdown: float = 1.0,
    error_rate: float = 0.0,
    step: timedelta = timedelta(seconds=10),
) -> list[InferenceSample]:
    """``intervals`` intervals of a 0.03 ms model on a busy machine, as a device reports them.

    Each interval has a Poisson(``rate``) number of inferences (at least one) with
    log-normal latencies (median 0.03 ms times ``slowdown``, sigma 0.3); one interval in
    five is hit by load that makes a random 2-30 % of its inferences 3-20 times slower.
    Errors come in bursts: one interval in five fails at 3 times ``error_rate``, the others
    at half of it. The figures are read from the device's own ``LatencyHistogram``.
    """
    samples = []
    for i in range(intervals):
        count = max(1, int(rng.poisson(rate)))
        latencies = 0.03 * slowdown * rng.lognormal(0.0, 0.3, count)
        if rng.random() < 0.2:
            hit = rng.random(count) < rng.uniform(0.02, 0.3)
            latencies[hit] *= rng.uniform(3, 20)
        failing = min(1.0, error_rate * (3 if rng.random() < 0.2 else 0.5))
        histogram = LatencyHistogram()
        for latency in latencies:
            histogram.record(float(latency), ok=bool(rng.random() >= failing))
        samples.append(
            InferenceSample(
                ts=start + (i + 1) * step,
                model=model,
                version=version,
                count=histogram.count,
                errors=histogram.errors,
                latency_p50_ms=histogram.percentile(0.50),
                latency_p95_ms=histogram.percentile(0.95),
                latency_p99_ms=histogram.percentile(0.99),
                latency_max_ms=histogram.max_ms,
                throughput=histogram.count / step.total_seconds(),
            )
        )
    return samples


def metrics_topic(device_id: str) -> str:
    return f"{PREFIX}/devices/{device_id}/metrics"


async def enrol(nats_url: str, device_ids: Iterable[str]) -> None:
    """Publish ``eaf.device.enrolled`` for each device, as the deployer does."""
    from schemas.config import NatsConfig

    async with Bus(NatsConfig(url=nats_url), service="test-enrol") as bus:
        for device_id in device_ids:
            await bus.publish(DeviceEnrolled(device_id=device_id))


async def publish_all(
    client: aiomqtt.Client, messages: Iterable[tuple[str, bytes]], *, window: int = 50
) -> None:
    """Publish with QoS 1, at most ``window`` unacknowledged at once."""
    sem = asyncio.Semaphore(window)

    async def one(topic: str, payload: bytes) -> None:
        async with sem:
            await client.publish(topic, payload, qos=1)

    await asyncio.gather(*(one(t, p) for t, p in messages))


async def influx_query(url: str, database: str, q: str) -> list[dict[str, Any]]:
    """The series of one InfluxQL statement; an error fails the test."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        r = await client.get("/query", params={"db": database, "q": q, "epoch": "ns"})
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    return list(result.get("series", []))


async def influx_count(url: str, database: str, where: str = "") -> int:
    """Points of ``inference`` (``count`` field), 0 while the database does not exist."""
    try:
        series = await influx_query(
            url, database, f'SELECT count("count") FROM "inference" {where}'
        )
    except (httpx.HTTPError, AssertionError):
        return 0
    return int(series[0]["values"][0][1]) if series else 0


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.25)


def counted(counter: Counter) -> float:
    """The current value of a counter without labels."""
    (metric,) = counter.collect()
    return next(s.value for s in metric.samples if s.name.endswith("_total"))


def recent(minutes: float = 30) -> datetime:
    """A start time safely inside any retention policy, whole seconds."""
    return (datetime.now(UTC) - timedelta(minutes=minutes)).replace(microsecond=0)
