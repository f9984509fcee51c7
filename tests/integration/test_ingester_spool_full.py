"""The ingester's spool full (InfluxDB unreachable): the oldest points are dropped, the
drop is counted (persistently and for Prometheus) and logged, and the newest are kept."""

from __future__ import annotations

from datetime import timedelta

import aiomqtt
from prometheus_client import generate_latest

from edgeaiforge_stack.servers import free_port
from services.common.bus import Bus
from services.common.mqtt_admin import SERVICE_ROLE
from services.ingester import Ingester
from services.ingester.handlers import create_router
from services.ingester.store import Spool
from tests.support.metrics import (
    batch,
    counted,
    make_settings,
    metrics_topic,
    publish_all,
    recent,
    wait_until,
)


async def test_full_spool_drops_the_oldest_and_counts_them(
    tmp_path, nats_server, mosquitto_server, mqtt_user, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=user, unique_id=unique_id,
        nats_url=nats_server.url,
        influx_url=f"http://127.0.0.1:{free_port()}",  # nobody listens: InfluxDB is down
        max_spool_points=50,
    )  # fmt: skip
    device = unique_id("dev-")
    start = recent()
    batches = [batch(device, start + timedelta(minutes=i), 5, seed=i) for i in range(20)]
    messages = [(metrics_topic(device), b.model_dump_json().encode()) for b in batches]
    publisher = await mqtt_user(roles=[SERVICE_ROLE])
    bus = Bus(settings.nats, service="ingester")
    ingester = Ingester(settings)
    bus.include(create_router(ingester, settings.nats))
    async with ingester:
        ingester.enrol(device)
        async with aiomqtt.Client(
            mosquitto_server.host,
            mosquitto_server.port,
            username=publisher.username,
            password=publisher.password,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await publish_all(client, messages, window=1)

        async def all_taken() -> bool:
            return counted(ingester.figures.accepted) == 20

        await wait_until(all_taken, timeout=30, what="all 20 batches accepted")
        assert ingester.spool.count == 50
        assert ingester.spool.dropped == 50
        exposition = generate_latest(ingester.figures.registry).decode()
        assert "eaf_ingester_points_dropped_total 50.0" in exposition
        kept = [line for _, lines in ingester.spool.peek(100) for line in lines]
    newest = {int(s.ts.timestamp()) for b in batches[10:] for s in b.inference}
    kept_seconds = {int(line.rsplit(" ", 1)[1]) // 10**9 for line in kept}
    assert kept_seconds == newest
    # The count survives a restart of the ingester.
    reopened = Spool(settings.ingester.spool_path, max_points=50, max_rejected=10)
    try:
        assert reopened.dropped == 50
    finally:
        reopened.close()
