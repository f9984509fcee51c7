"""The ingester against real Mosquitto, NATS and InfluxDB: bad messages are set aside and
counted while every good message around them lands; enrolment re-admits early metrics."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import aiomqtt
import httpx

from services.common.mqtt_admin import SERVICE_ROLE
from services.ingester import Ingester
from services.ingester.domain import Reason
from services.ingester.handlers import create_router
from tests.support.metrics import (
    batch,
    enrol,
    influx_count,
    influx_query,
    metrics_topic,
    publish_all,
    recent,
    wait_until,
)


async def test_bad_messages_are_set_aside_and_good_ones_around_them_land(
    ingester_settings, mosquitto_server, mqtt_user, unique_id
) -> None:
    from services.common.bus import Bus

    good_dev, late_dev, stranger = unique_id("dev-"), unique_id("dev-"), unique_id("dev-")
    start = recent()
    bus = Bus(ingester_settings.nats, service="ingester")
    publisher = await mqtt_user(roles=[SERVICE_ROLE])

    def good(i: int) -> tuple[str, bytes]:
        b = batch(good_dev, start + timedelta(minutes=i), 5, seed=i)
        return metrics_topic(good_dev), b.model_dump_json().encode()

    valid = json.loads(batch(good_dev, start, 1).model_dump_json())
    wrong_types = {**valid, "inference": [{**valid["inference"][0], "count": "many"}]}
    nan_payload = json.dumps(
        {**valid, "inference": [{**valid["inference"][0], "latency_p95_ms": float("nan")}]}
    )
    mismatch = batch(late_dev, start, 2).model_dump_json()
    messages = [
        good(0),
        (metrics_topic(good_dev), b'{"batch_id": "oops", '),
        good(1),
        (metrics_topic(good_dev), json.dumps(wrong_types).encode()),
        good(2),
        (metrics_topic(good_dev), nan_payload.encode()),
        good(3),
        (metrics_topic(good_dev), b"x" * (10 * 1024 * 1024)),
        good(4),
        (metrics_topic(stranger), batch(stranger, start, 3).model_dump_json().encode()),
        good(5),
        (metrics_topic(good_dev), mismatch.encode()),
        good(6),
        # Sent before the device's enrolment event: set aside, then re-admitted.
        (metrics_topic(late_dev), batch(late_dev, start, 4).model_dump_json().encode()),
        good(7),
    ]
    db = ingester_settings.influxdb.database
    url = ingester_settings.influxdb.url
    ingester = Ingester(ingester_settings)
    bus.include(create_router(ingester, ingester_settings.nats))
    async with ingester:
        await bus.start()
        try:
            ingester.enrol(good_dev)
            async with aiomqtt.Client(
                mosquitto_server.host,
                mosquitto_server.port,
                username=publisher.username,
                password=publisher.password,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                # One at a time, so that the order around each bad message is the real one.
                await publish_all(client, messages, window=1)

            async def good_ones_landed() -> bool:
                return await influx_count(url, db, f"WHERE device = '{good_dev}'") == 40

            await wait_until(good_ones_landed, timeout=30, what="the 8 good batches")
            assert await influx_count(url, db, f"WHERE device = '{late_dev}'") == 0

            await enrol(ingester_settings.nats.url, [late_dev])

            async def late_landed() -> bool:
                return await influx_count(url, db, f"WHERE device = '{late_dev}'") == 4

            await wait_until(late_landed, timeout=30, what="the re-admitted batch")

            fig = ingester.figures
            expected = {
                Reason.MALFORMED_JSON: 1,
                Reason.INVALID: 2,  # wrong types, NaN
                Reason.OVERSIZE: 1,
                Reason.UNKNOWN_DEVICE: 2,  # the stranger, and late_dev before enrolment
                Reason.DEVICE_MISMATCH: 1,
            }
            for reason, n in expected.items():
                assert fig.rejected_count(reason.value) == n, reason
            aside = ingester.spool.rejected()
            by_reason = {r.reason for r in aside}
            assert by_reason == {
                "malformed_json",
                "invalid",
                "oversize",
                "unknown_device",
                "device_mismatch",
            }
            # The stranger's message stays aside; late_dev's was taken back.
            unknown = ingester.spool.rejected("unknown_device")
            assert [r.device_id for r in unknown] == [stranger]
            assert any("latency_p95_ms" in r.detail for r in aside if r.reason == "invalid")
            oversize = ingester.spool.rejected("oversize")[0]
            assert oversize.size == 10 * 1024 * 1024 and len(oversize.payload) <= 4096
            assert await influx_count(url, db, f"WHERE device = '{stranger}'") == 0

            # The figures are served for Prometheus.
            async with httpx.AsyncClient() as http:
                text = (
                    await http.get(
                        f"http://127.0.0.1:{ingester_settings.ingester.metrics_port}/metrics"
                    )
                ).text
            assert 'eaf_ingester_messages_rejected_total{reason="oversize"} 1.0' in text
            # At least the 44 points of this test (deployment events of other tests on the
            # shared bus also become points).
            written = re.search(r"^eaf_ingester_points_written_total (\S+)$", text, re.M)
            assert written is not None and float(written.group(1)) >= 44
            assert "eaf_ingester_messages_received_total 15.0" in text
        finally:
            await bus.stop()

    # Original timestamps and values: the first good batch exactly as sent.
    first = batch(good_dev, start, 5, seed=0)
    t0 = int(start.timestamp()) * 10**9
    series = await influx_query(
        url,
        db,
        f"SELECT \"count\", latency_p95_ms FROM inference WHERE device = '{good_dev}' "
        f"AND time >= {t0} AND time < {t0 + 5 * 10**9}",
    )
    rows = series[0]["values"]
    assert [r[0] for r in rows] == [int(s.ts.timestamp()) * 10**9 for s in first.inference]
    assert [r[1] for r in rows] == [s.count for s in first.inference]
    assert [r[2] for r in rows] == [s.latency_p95_ms for s in first.inference]
