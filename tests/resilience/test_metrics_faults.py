"""Metrics faults: a device offline so long that its bounded spool fills. The oldest
batches go, the count of what went travels in every later batch, and what was kept
reaches InfluxDB with its timestamps once the device is back. Real Mosquitto, ingester
and InfluxDB.

An InfluxDB outage longer than any retry window is covered by
tests/integration/test_ingester_durability.py (100 000 points through a 60 s outage, and
an ingester killed mid-stream); the ingester's own spool does not drop when full but holds
its MQTT acks back, so the broker keeps the messages (docs/metrics.md)."""

from __future__ import annotations

import aiomqtt

from edge_runtime.metrics import MetricsCollector, MetricsReporter
from edge_runtime.spool import MetricsSpool
from schemas.telemetry import MetricsBatch, timestamp_ns
from services.common.mqtt_admin import SERVICE_ROLE, device_role_acls
from services.ingester import Ingester
from tests.support.metrics import influx_query, make_settings, wait_until

KEPT, MADE = 5, 12


async def test_full_device_spool_drops_oldest_counts_and_reports_it(
    tmp_path, mosquitto_server, influxdb_server, mqtt_user, unique_id
) -> None:
    device_id = unique_id("dev-")
    service = await mqtt_user(roles=[SERVICE_ROLE])
    device = await mqtt_user(acls=device_role_acls(device_id))
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=service, unique_id=unique_id,
        influx_url=influxdb_server.url, metrics_port=0,
    )  # fmt: skip
    spool = MetricsSpool(tmp_path / "spool.db", max_batches=KEPT)
    collector = MetricsCollector(device_id)
    reporter = MetricsReporter(collector, spool, interval=1.0)
    made: list[MetricsBatch] = []
    # Offline: every interval's batch goes to the spool, which holds KEPT of them.
    for i in range(MADE):
        collector.record("m", "1.0.0", 1.0 + i, ok=True)
        batch = reporter.tick()
        assert batch is not None
        made.append(batch)
    assert len(spool) == KEPT and spool.dropped == MADE - KEPT
    kept = made[-KEPT:]
    async with Ingester(settings) as ingester:
        ingester.enrol(device_id)
        async with aiomqtt.Client(
            mosquitto_server.host, mosquitto_server.port, username=device.username,
            password=device.password, identifier=device_id,
        ) as client:  # fmt: skip
            assert await reporter.flush(client) == KEPT
        db = settings.influxdb.database

        async def landed() -> bool:
            rows = await influx_query(
                influxdb_server.url, db, f"SELECT count(\"count\") FROM inference "
                f"WHERE device = '{device_id}'",
            )  # fmt: skip
            return bool(rows) and rows[0]["values"][0][1] == KEPT

        await wait_until(landed, timeout=30, what="the kept batches in InfluxDB")
        inference = await influx_query(
            influxdb_server.url, db, f"SELECT \"count\" FROM inference WHERE device = '{device_id}'"
        )
        dropped = await influx_query(
            influxdb_server.url, db,
            f"SELECT spool_dropped FROM device WHERE device = '{device_id}'",
        )  # fmt: skip
    spool.close()
    # The newest KEPT arrived with their own timestamps; the oldest never did.
    stamps = [row[0] for row in inference[0]["values"]]
    assert stamps == [timestamp_ns(b.inference[0].ts) for b in kept]
    # Each batch carries how many had been dropped when it was made: counted and reported.
    assert [row[1] for row in dropped[0]["values"]] == [b.spool_dropped for b in kept]
    assert [b.spool_dropped for b in kept] == list(range(MADE - 2 * KEPT, MADE - KEPT))
