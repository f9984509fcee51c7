"""Event delivery under faults: NATS restarted while the deployer publishes and a consumer
consumes; a consumer killed after its side effect and before its ack. Counts asserted:
nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from edge_runtime import EdgeRuntime
from edgeaiforge_stack.servers import NatsServer
from schemas.config import NatsConfig
from schemas.deployer import (
    CreateDeployment,
    DeployerRpc,
    DeploymentRef,
    DeploymentStatus,
    TargetSelector,
)
from schemas.events import DeploymentCompleted, DeploymentTargetUpdated, ModelUploaded
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service
from tests.support.deploy import (
    StaticCatalog,
    deployer_settings,
    enroll_via_rpc,
    forget_device,
    padded_model,
    put,
)
from tests.support.resilience import REPO, apply_once, ledger_rows, open_ledger, wait_until

OUTAGE_SECONDS = 6.0


@pytest.mark.slow
async def test_nats_restarted_during_a_rollout_loses_no_event_and_applies_none_twice(
    mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    nats = NatsServer(data_dir=tmp_path / "nats")  # our own: the session one is shared
    user = await mqtt_user(roles=[SERVICE_ROLE])
    with nats:
        settings = deployer_settings(
            tmp_path, nats_url=nats.url, mosquitto=mosquitto_server, service_user=tuple(user)
        )
        ledger = await open_ledger(tmp_path / "ledger.db")
        deliveries: Counter[str] = Counter()
        consumer = Bus(NatsConfig(url=nats.url, ack_wait=2.0), service="witness")

        @consumer.consumer(DeploymentTargetUpdated, durable="witness-targets")
        async def on_target(e: DeploymentTargetUpdated) -> None:
            deliveries[str(e.event_id)] += 1
            await apply_once(ledger, "witness", e.event_id, f"{e.device_id}:{e.state.value}")

        @consumer.consumer(DeploymentCompleted, durable="witness-completed")
        async def on_completed(e: DeploymentCompleted) -> None:
            deliveries[str(e.event_id)] += 1
            await apply_once(ledger, "witness", e.event_id, f"completed:{e.outcome.value}")

        catalog = StaticCatalog()
        async with consumer, create_service(settings, catalog=catalog) as app:
            store = ArtifactStore(
                root=settings.model_repository.storage_path,
                kek=load_kek(settings.security),
                chunk_size=settings.deployment.chunk_size,
            )
            group = unique_id("fleet-")
            runtimes = []
            for i in range(3):
                device_id = f"{group}-{i}"
                await enroll_via_rpc(app.bus, tmp_path / device_id, device_id, group=group)
                runtimes.append(EdgeRuntime(tmp_path / device_id))
            info = await put(store, padded_model(300_000, seed=5))
            model = unique_id("m-")
            catalog.add(model, "1.0.0", info)
            tasks = [asyncio.create_task(rt.run()) for rt in runtimes]
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(rt.wait_connected() for rt in runtimes)), 30
                )
                created = await app.bus.call(
                    DeployerRpc.CREATE_DEPLOYMENT,
                    CreateDeployment(
                        model=model, version="1.0.0", target=TargetSelector(group=group)
                    ),
                )
                # NATS goes away: the rollout goes on over MQTT, and every state change and
                # the completion happen while the deployer cannot publish.
                await asyncio.to_thread(nats.stop)
                await wait_until(
                    lambda: all(rt.active is not None for rt in runtimes), 60, "devices active"
                )
                # Longer than a publish's timeout (5 s): the deployer's publishes fail.
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(nats.start)
                async with asyncio.timeout(60):
                    while True:
                        try:
                            done = await app.bus.call(
                                DeployerRpc.GET_DEPLOYMENT,
                                DeploymentRef(deployment_id=created.deployment_id),
                            )
                        except Exception:  # the bus is still reconnecting
                            done = None
                        if done is not None and done.status is DeploymentStatus.COMPLETED:
                            break
                        await asyncio.sleep(0.2)
                devices = {rt.device_id for rt in runtimes}

                def everything_arrived() -> bool:
                    got = {w for _, w in asyncio_rows}
                    return {f"{d}:active" for d in devices} | {"completed:succeeded"} <= got

                asyncio_rows: list[tuple[str, str]] = []

                async def poll() -> None:
                    async with asyncio.timeout(60):
                        while True:
                            asyncio_rows[:] = await ledger_rows(ledger)
                            if everything_arrived():
                                return
                            await asyncio.sleep(0.2)

                await poll()
                await asyncio.sleep(2.5)  # past ack_wait: a duplicate would have come by now
                rows = await ledger_rows(ledger)
            finally:
                for rt in runtimes:
                    rt.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(forget_device(rt.state.root) for rt in runtimes))
        await ledger.dispose()
    # Applied once each: no event id twice, no (device, state) twice.
    ids = Counter(e for e, _ in rows)
    assert max(ids.values()) == 1, ids
    whats = Counter(w for _, w in rows if w.startswith(group) or w.startswith("completed"))
    assert max(whats.values()) == 1, whats
    assert whats["completed:succeeded"] == 1
    for d in devices:
        assert whats[f"{d}:active"] == 1


async def test_consumer_killed_after_its_side_effect_before_its_ack_applies_it_once(
    nats_server, tmp_path, unique_id
) -> None:
    durable = unique_id("dur")
    model = unique_id("m")
    marker = tmp_path / "applied"
    ledger_path = tmp_path / "ledger.db"
    await (await open_ledger(ledger_path)).dispose()
    # The victim commits its side effect (with claim_event), then is killed before the ack.
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from tests.support.resilience import apply_once, open_ledger
        from schemas.config import NatsConfig
        from schemas.events import ModelUploaded
        from services.common.bus import Bus

        async def main():
            ledger = await open_ledger(pathlib.Path({str(ledger_path)!r}))
            bus = Bus(NatsConfig(url={nats_server.url!r}, ack_wait=2.0), service="victim")

            @bus.consumer(ModelUploaded, durable={durable!r})
            async def handle(e: ModelUploaded) -> None:
                if e.model == {model!r}:
                    await apply_once(ledger, {durable!r}, e.event_id, e.model)
                    pathlib.Path({str(marker)!r}).write_text(str(e.event_id))
                    await asyncio.sleep(3600)  # the ack never comes

            await bus.start()
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env, cwd=REPO)
    event = ModelUploaded(model=model, version="1.0.0", sequence=1, artifact_id="ab" * 32,
                          size_bytes=1)  # fmt: skip
    try:
        async with Bus(NatsConfig(url=nats_server.url), service="test") as publisher:
            await asyncio.sleep(1.0)  # the victim creates its durable consumer
            await publisher.publish(event)
            await wait_until(marker.exists, 30, "the victim's side effect")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    ledger = await open_ledger(ledger_path)
    seen: list[bool] = []
    survivor = Bus(NatsConfig(url=nats_server.url, ack_wait=2.0), service="survivor")

    @survivor.consumer(ModelUploaded, durable=durable)
    async def handle(e: ModelUploaded) -> None:
        if e.model == model:
            seen.append(await apply_once(ledger, durable, e.event_id, e.model))

    async with survivor:
        await wait_until(lambda: bool(seen), 30, "the redelivery")
        await asyncio.sleep(2.5)  # past ack_wait: it was acked this time, nothing more comes
    rows = await ledger_rows(ledger)
    await ledger.dispose()
    assert seen == [False]  # redelivered once, recognised, not applied again
    assert rows == [(str(event.event_id), model)]
