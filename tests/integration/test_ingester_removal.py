"""The ingester and ``eaf.device.removed``, on real Mosquitto, NATS and InfluxDB: what a
device sent before its removal lands, what it sends after is set aside as removed, an
enrolment older than the removal changes nothing and a newer one lets it back in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiomqtt

from schemas.config import NatsConfig
from schemas.events import DeviceEnrolled, DeviceRemoved
from services.common.bus import Bus
from services.common.mqtt_admin import SERVICE_ROLE
from services.ingester import Ingester
from services.ingester.domain import Reason
from services.ingester.handlers import create_router
from tests.support.metrics import (
    batch,
    counted,
    enrol,
    influx_count,
    metrics_topic,
    publish_all,
    recent,
    wait_until,
)


async def test_a_removed_device_metrics_are_refused_from_then_on(
    ingester_settings, mosquitto_server, mqtt_user, unique_id
) -> None:
    device = unique_id("dev-")
    start = recent()
    publisher = await mqtt_user(roles=[SERVICE_ROLE])
    url, db = ingester_settings.influxdb.url, ingester_settings.influxdb.database
    where = f"WHERE device = '{device}'"

    def batches(first: int, n: int) -> list[tuple[str, bytes]]:
        return [
            (
                metrics_topic(device),
                batch(device, start + timedelta(minutes=i), 5, seed=i).model_dump_json().encode(),
            )
            for i in range(first, first + n)
        ]

    bus = Bus(ingester_settings.nats, service="ingester")
    ingester = Ingester(ingester_settings)
    bus.include(create_router(ingester, ingester_settings.nats))
    async with ingester:
        await bus.start()
        try:
            await enrol(ingester_settings.nats.url, [device])
            await wait_until(
                lambda: _true(ingester.spool.is_known(device)), timeout=30, what="enrolment"
            )
            async with aiomqtt.Client(
                mosquitto_server.host,
                mosquitto_server.port,
                username=publisher.username,
                password=publisher.password,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                await publish_all(client, batches(0, 4), window=1)

                async def accepted() -> bool:
                    return counted(ingester.figures.accepted) >= 4

                await wait_until(accepted, timeout=30, what="the 4 batches accepted")
                removed_at = datetime.now(UTC)
                async with Bus(
                    NatsConfig(url=ingester_settings.nats.url), service="test"
                ) as events:
                    await events.publish(DeviceRemoved(device_id=device, occurred_at=removed_at))
                    await wait_until(
                        lambda: _true(ingester.spool.is_removed(device)),
                        timeout=30,
                        what="the removal",
                    )
                    await publish_all(client, batches(4, 3), window=1)

                    async def refused() -> bool:
                        return ingester.figures.rejected_count(Reason.DEVICE_REMOVED.value) == 3

                    await wait_until(refused, timeout=30, what="3 batches set aside")

                    # Accepted before the removal: all of it reaches InfluxDB.
                    async def landed() -> bool:
                        return await influx_count(url, db, where) == 20

                    await wait_until(landed, timeout=30, what="the 20 points accepted before")
                    aside = ingester.spool.rejected(Reason.DEVICE_REMOVED.value)
                    assert [r.device_id for r in aside] == [device] * 3
                    assert all("removed" in r.detail for r in aside)

                    # An enrolment from before the removal (a late event) changes nothing.
                    stale = DeviceEnrolled(
                        device_id=device, occurred_at=removed_at - timedelta(seconds=5)
                    )
                    await events.publish(stale)
                    await publish_all(client, batches(10, 1), window=1)

                    async def still_refused() -> bool:
                        return ingester.figures.rejected_count(Reason.DEVICE_REMOVED.value) == 4

                    await wait_until(still_refused, timeout=30, what="a batch after the stale one")
                    assert ingester.spool.is_removed(device)
                    # A newer one takes the device back; what was refused stays aside.
                    await events.publish(
                        DeviceEnrolled(
                            device_id=device, occurred_at=removed_at + timedelta(seconds=1)
                        )
                    )
                    await wait_until(
                        lambda: _true(ingester.spool.is_known(device)),
                        timeout=30,
                        what="the new enrolment",
                    )
                await publish_all(client, batches(7, 1), window=1)

                async def back() -> bool:
                    return await influx_count(url, db, where) == 25

                await wait_until(back, timeout=30, what="metrics after the new enrolment")
            assert len(ingester.spool.rejected(Reason.DEVICE_REMOVED.value)) == 4
            assert not ingester.spool.is_removed(device)
        finally:
            await bus.stop()


async def _true(value: bool) -> bool:
    return value
