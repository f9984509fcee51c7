"""``ingest_ratio``: device metrics through MQTT, the ingester and InfluxDB, against
direct batched ``/write`` of the same points."""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import baselines
from bench._common import Result
from schemas.config import Settings
from schemas.telemetry import DeviceSample, InferenceSample, MetricsBatch
from services.ingester.domain import batch_lines
from services.ingester.service import Ingester
from tests.support.servers import Servers

PREFIX = "eaf/v1"


def make_batches(devices: int, messages: int, samples: int) -> list[tuple[str, bytes]]:
    """``messages`` batches per device, each ``samples`` inference + ``samples`` device
    samples at one-second steps (a device flushing its spool after a while offline)."""
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    out: list[tuple[str, bytes]] = []
    for m in range(messages):
        for d in range(devices):
            device_id = f"bench-metrics-{d:04d}"
            base = start + timedelta(seconds=m * samples)
            inference = tuple(
                InferenceSample(
                    ts=base + timedelta(seconds=i),
                    model="bench",
                    version="1.0.0",
                    count=100 + i % 7,
                    errors=i % 3,
                    latency_p50_ms=1.0 + (i % 11) / 10,
                    latency_p95_ms=2.0 + (i % 13) / 10,
                    latency_p99_ms=3.0 + (i % 17) / 10,
                    latency_max_ms=5.0 + (i % 19) / 10,
                    throughput=100.0 + i % 7,
                )
                for i in range(samples)
            )
            device = tuple(
                DeviceSample(
                    ts=base + timedelta(seconds=i), cpu_percent=12.5 + i % 50, memory_bytes=1 << 28
                )
                for i in range(samples)
            )
            batch = MetricsBatch(
                batch_id=uuid.uuid4(), device_id=device_id, inference=inference, device=device
            )
            out.append((f"{PREFIX}/devices/{device_id}/metrics", batch.model_dump_json().encode()))
    return out


def _publish_all(
    host: str,
    port: int,
    user: tuple[str, str],
    messages: list[tuple[str, bytes]],
    ready: Any,
    go: Any,
    window: int = 1000,
) -> float:
    """QoS 1 publish of every message from one paho client; returns when all are acked.

    Runs in its own process (the devices are not the ingester's machine): connects, says
    ``ready``, and starts when told ``go``.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-metrics-pub-{secrets.token_hex(3)}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(*user)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    acked = 0
    done = threading.Event()

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(messages):
            done.set()

    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    ready.set()
    go.wait(60)
    start = time.perf_counter()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1)
    done.wait(600)
    took = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return took


async def ingest(
    servers: Servers, workdir: Path, *, devices: int = 100, messages: int = 20, samples: int = 50
) -> Result:
    """Points/s end to end (first publish until InfluxDB acknowledged the last point)."""
    workdir.mkdir(parents=True, exist_ok=True)
    batches = make_batches(devices, messages, samples)
    lines = [
        line
        for _, payload in batches
        for line in batch_lines(MetricsBatch.model_validate_json(payload))
    ]
    total = len(lines)
    settings = Settings.model_validate(
        {
            "nats": {"url": servers.nats.url},
            "mqtt": {
                "host": servers.mosquitto.host,
                "port": servers.mosquitto.port,
                "username": servers.service_user[0],
                "password": servers.service_user[1],
            },
            "influxdb": {"url": servers.influx.url, "database": "bench_ingest"},
            "ingester": {
                "spool_path": str(workdir / "spool.db"),
                "metrics_port": 0,
                "client_id": f"bench-ingester-{secrets.token_hex(3)}",
                "shared_group": f"bench{secrets.token_hex(3)}",
            },
        }
    )
    async with Ingester(settings) as ingester:
        for d in range(devices):
            ingester.enrol(f"bench-metrics-{d:04d}")
        await asyncio.to_thread(ingester.receiver.wait_connected, 15)
        await asyncio.sleep(0.5)  # the subscription is made in on_connect
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(1, mp_context=ctx) as pool:
            ready, go = manager.Event(), manager.Event()
            publishing = asyncio.get_running_loop().run_in_executor(
                pool,
                _publish_all,
                servers.mosquitto.host,
                servers.mosquitto.port,
                servers.service_user,
                batches,
                ready,
                go,
            )
            await asyncio.to_thread(ready.wait, 60)
            start = time.perf_counter()
            go.set()
            publish_seconds = await publishing
        deadline = start + 600
        while ingester.figures.written._value.get() < total:
            if time.perf_counter() > deadline:
                raise RuntimeError("ingest: InfluxDB did not get every point within 600 s")
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - start
    stored = await asyncio.to_thread(_count, servers.influx.url, "bench_ingest")
    direct = await asyncio.to_thread(
        baselines.direct_influx_points_per_s,
        servers.influx.url,
        "bench_direct",
        [line.encode() for line in lines],
        settings.influxdb.batch_size,
    )
    ours = total / seconds
    return Result(
        key="ingest_ratio",
        what=f"{total} points via MQTT→ingester→InfluxDB ÷ direct batched /write",
        value=ours / direct["points_per_s"],
        goal=">= 0.7",
        raw={
            "ours_points_per_s": round(ours),
            "ours_seconds": round(seconds, 3),
            "publish_seconds": round(publish_seconds, 3),
            "baseline_points_per_s": round(direct["points_per_s"]),
            "baseline_seconds": round(direct["seconds"], 3),
            "points": total,
            "points_in_influxdb": stored,
            "messages": len(batches),
            "points_per_message": 2 * samples,
            "batch_size": settings.influxdb.batch_size,
            "includes": "QoS 1 publish of every batch from one paho client in another "
            "process, the ingester's validation, line protocol, durable SQLite spool and "
            "ack, batched /write; the baseline writes the ready-made lines of the same points",
        },
    )


def _count(url: str, database: str) -> int:
    import httpx

    r = httpx.get(
        f"{url}/query",
        params={"db": database, "q": 'SELECT count("count") FROM "eaf"."inference"'},
        timeout=60,
    )
    series = r.json()["results"][0].get("series", [])
    inference = int(series[0]["values"][0][1]) if series else 0
    return inference * 2
