"""A device's metrics through real Mosquitto into InfluxDB: offline batches are spooled on
the device and sent after it reconnects, with their original timestamps."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

from edge_runtime.metrics import MetricsCollector, MetricsReporter
from edge_runtime.spool import MetricsSpool
from edgeaiforge_stack.servers import free_port
from schemas.telemetry import MetricsBatch, timestamp_ns
from services.common.mqtt_admin import SERVICE_ROLE, device_role_acls
from services.ingester import Ingester
from tests.support.metrics import influx_query, make_settings, wait_until


async def test_offline_device_sends_spooled_batches_with_original_timestamps(
    tmp_path, mosquitto_server, influxdb_server, mqtt_user, unique_id
) -> None:
    device_id = unique_id("dev-")
    service = await mqtt_user(roles=[SERVICE_ROLE])
    # The device logs in with its own ACLs: it may publish only its own metrics.
    device = await mqtt_user(acls=device_role_acls(device_id))
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=service, unique_id=unique_id,
        influx_url=influxdb_server.url, metrics_port=0,
    )  # fmt: skip
    spool = MetricsSpool(tmp_path / "device-spool.db")
    collector = MetricsCollector(device_id)
    reporter = MetricsReporter(collector, spool, interval=0.2)
    online = False
    nowhere = free_port()

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(
            mosquitto_server.host,
            mosquitto_server.port if online else nowhere,
            username=device.username,
            password=device.password,
            identifier=device_id,
            timeout=2,
        )

    async def infer() -> None:
        i = 0
        while True:
            collector.record("resnet", "2.1.0", 1.0 + (i % 20) / 4, ok=i % 50 != 0)
            i += 1
            await asyncio.sleep(0.005)

    async with Ingester(settings) as ingester:
        ingester.enrol(device_id)
        inferring = asyncio.create_task(infer())
        running = asyncio.create_task(reporter.run(connect, max_backoff=0.5))
        try:
            # Offline: the broker is unreachable, batches pile up on the device's disk.
            async def some_spooled() -> bool:
                return len(spool) >= 5

            await wait_until(some_spooled, timeout=30, what="batches in the device spool")
            offline = [MetricsBatch.model_validate_json(p) for _, p in spool.peek(1000)]
            sent_while_offline = {
                timestamp_ns(s.ts): (s.count, s.errors, s.latency_p95_ms)
                for b in offline
                for s in b.inference
            }
            assert len(sent_while_offline) >= 5
            online = True

            async def spool_sent() -> bool:
                return not any(
                    MetricsBatch.model_validate_json(p).batch_id == offline[-1].batch_id
                    for _, p in spool.peek(1000)
                )

            await wait_until(spool_sent, timeout=30, what="the spool to drain")
            db = settings.influxdb.database
            last = max(sent_while_offline)

            async def landed() -> bool:
                series = await influx_query(
                    influxdb_server.url,
                    db,
                    f"SELECT count(\"count\") FROM inference WHERE device = '{device_id}' "
                    f"AND time <= {last}",
                )
                return bool(series) and series[0]["values"][0][1] == len(sent_while_offline)

            await wait_until(landed, timeout=30, what="the offline batches in InfluxDB")
        finally:
            for task in (inferring, running):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        series = await influx_query(
            influxdb_server.url,
            db,
            'SELECT "count", errors, latency_p95_ms, model, version FROM inference '
            f"WHERE device = '{device_id}' AND time <= {last}",
        )
        stored = {row[0]: (row[1], row[2], row[3]) for row in series[0]["values"]}
        assert stored == sent_while_offline
        assert {(row[4], row[5]) for row in series[0]["values"]} == {("resnet", "2.1.0")}
        # The device's own figures came along.
        device_rows = await influx_query(
            influxdb_server.url, db, f"SELECT cpu_percent FROM device WHERE device = '{device_id}'"
        )
        assert device_rows and len(device_rows[0]["values"]) >= len(offline)
    spool.close()
