"""Nothing is lost: 100 000 points through an InfluxDB outage, and an ingester killed
mid-stream (SIGKILL) and restarted. Real Mosquitto, InfluxDB and NATS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest

from edgeaiforge_stack.servers import InfluxServer
from services.common.mqtt_admin import SERVICE_ROLE
from services.ingester import Ingester
from tests.support.metrics import (
    batch,
    counted,
    enrol,
    influx_count,
    influx_query,
    make_settings,
    metrics_topic,
    publish_all,
    recent,
    settings_toml,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
#: How long InfluxDB stays down in the middle of the stream (the issue asks for a minute).
OUTAGE_SECONDS = 60.0


def plan(
    devices: list[str], batches: int, per_batch: int, start: datetime
) -> list[list[tuple[str, bytes]]]:
    """Per round, one message per device; each device's samples 1 s apart, no overlap."""
    rounds = []
    for r in range(batches):
        rounds.append(
            [
                (
                    metrics_topic(d),
                    batch(d, start + timedelta(seconds=r * per_batch), per_batch, seed=r)
                    .model_dump_json()
                    .encode(),
                )
                for d in devices
            ]
        )
    return rounds


def expected_points(
    devices: list[str], batches: int, per_batch: int, start: datetime
) -> dict[str, dict[int, int]]:
    """device -> {timestamp ns: count field} as sent."""
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for d in devices:
        for r in range(batches):
            for s in batch(
                d, start + timedelta(seconds=r * per_batch), per_batch, seed=r
            ).inference:
                out[d][int(s.ts.timestamp()) * 10**9] = s.count
    return out


async def stored_points(url: str, db: str, prefix: str) -> dict[str, dict[int, int]]:
    series = await influx_query(
        url, db, f'SELECT "count" FROM inference WHERE device =~ /^{prefix}/ GROUP BY device'
    )
    return {s["tags"]["device"]: dict(s["values"]) for s in series}


@pytest.mark.slow
async def test_100k_points_from_50_devices_survive_an_influxdb_outage(
    tmp_path, mosquitto_server, mqtt_user, unique_id
) -> None:
    prefix = unique_id("d")
    devices = [f"{prefix}-{i:02d}" for i in range(50)]
    batches, per_batch = 40, 50  # 50 devices x 40 batches x 50 samples = 100 000 points
    start = recent(minutes=180)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    publisher = await mqtt_user(roles=[SERVICE_ROLE])
    influx = InfluxServer(data_dir=tmp_path / "influx").start()
    try:
        # No bus (the default nats_url): the devices are enrolled directly.
        settings = make_settings(
            tmp_path=tmp_path, mosquitto=mosquitto_server, user=user, unique_id=unique_id,
            influx_url=influx.url, database="metrics",
        )  # fmt: skip
        rounds = plan(devices, batches, per_batch, start)
        async with Ingester(settings) as ingester:
            for d in devices:
                ingester.enrol(d)
            async with aiomqtt.Client(
                mosquitto_server.host,
                mosquitto_server.port,
                username=publisher.username,
                password=publisher.password,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                half = batches // 2
                await publish_all(client, [m for r in rounds[:half] for m in r])

                async def some_written() -> bool:
                    return await influx_count(influx.url, "metrics") > 0

                await wait_until(some_written, timeout=60, what="the first points")
                # InfluxDB goes away in the middle of the stream, for a minute.
                await asyncio.to_thread(influx.stop)
                down_at = asyncio.get_running_loop().time()
                await publish_all(client, [m for r in rounds[half:] for m in r])

                async def all_spooled() -> bool:
                    return counted(ingester.figures.spooled) == 100_000

                await wait_until(all_spooled, timeout=120, what="every point in the spool")
                assert ingester.spool.count > 0  # held on disk while InfluxDB is away
                remaining = OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_at)
                await asyncio.sleep(max(0.0, remaining))
                assert counted(ingester.figures.write_retries) > 0
                await asyncio.to_thread(influx.start)

            async def everything_written() -> bool:
                return await influx_count(influx.url, "metrics") >= 100_000

            await wait_until(everything_written, timeout=120, what="all 100 000 points")
            assert ingester.spool.count == 0

        assert await influx_count(influx.url, "metrics") == 100_000
        stored = await stored_points(influx.url, "metrics", prefix)
        expected = expected_points(devices, batches, per_batch, start)
        assert sorted(stored) == sorted(devices)
        for d in devices:
            # Every point at its original timestamp with its own values: nothing lost,
            # nothing duplicated, nothing overwritten.
            assert stored[d] == expected[d], d
    finally:
        influx.stop()


def _start_ingester(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingester", "--config", str(config)],
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def _received(port: int) -> float:
    try:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith("eaf_ingester_messages_accepted_total "):
            return float(line.split()[1])
    return -1


@pytest.mark.slow
async def test_ingester_killed_mid_stream_and_restarted_loses_nothing(
    tmp_path, nats_server, mosquitto_server, influxdb_server, mqtt_user, unique_id
) -> None:
    prefix = unique_id("k")
    devices = [f"{prefix}-{i:02d}" for i in range(10)]
    batches, per_batch = 60, 20  # 12 000 points
    start = recent(minutes=180)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    publisher = await mqtt_user(roles=[SERVICE_ROLE])
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=user, unique_id=unique_id,
        nats_url=nats_server.url, influx_url=influxdb_server.url,
    )  # fmt: skip
    config = tmp_path / "ingester.toml"
    config.write_text(settings_toml(settings))
    log = tmp_path / "ingester.log"
    port = settings.ingester.metrics_port
    await enrol(nats_server.url, devices)
    proc = _start_ingester(config, log)
    try:

        async def up() -> bool:
            return await _received(port) >= 0

        await wait_until(up, timeout=60, what="the ingester's metrics endpoint")
        rounds = plan(devices, batches, per_batch, start)
        async with aiomqtt.Client(
            mosquitto_server.host,
            mosquitto_server.port,
            username=publisher.username,
            password=publisher.password,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:

            async def stream() -> None:
                # A steady stream (a round every 50 ms), so the kill lands in its middle.
                for r in rounds:
                    await publish_all(client, r, window=5)
                    await asyncio.sleep(0.05)

            sending = asyncio.create_task(stream())

            async def mid_stream() -> bool:
                return await _received(port) >= 100

            await wait_until(mid_stream, timeout=60, what="the ingester to take messages")
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            killed_after = await influx_count(influxdb_server.url, settings.influxdb.database)
            await sending
        assert killed_after < len(devices) * batches * per_batch
        proc = _start_ingester(config, log)

        async def everything() -> bool:
            n = await influx_count(influxdb_server.url, settings.influxdb.database)
            return n >= len(devices) * batches * per_batch

        try:
            await wait_until(everything, timeout=120, what="all points after the restart")
        except AssertionError as exc:
            n = await influx_count(influxdb_server.url, settings.influxdb.database)
            tail = log.read_text(errors="replace")[-6000:]
            detail = f"{exc}: {n} of 12000 in InfluxDB; ingester log:\n{tail}"
            raise AssertionError(detail) from None
        assert await influx_count(influxdb_server.url, settings.influxdb.database) == 12_000
        stored = await stored_points(influxdb_server.url, settings.influxdb.database, prefix)
        expected = expected_points(devices, batches, per_batch, start)
        for d in devices:
            assert stored[d] == expected[d], d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
