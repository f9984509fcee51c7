"""Rotating the platform's signing key under a running fleet, on real NATS and Mosquitto:
an enrolled device follows the rotation with its next manifest and deploys it; a manifest
signed by the retired key is refused; a device offline over two rotations catches up
through the chain, without enrolling again, and installs, byte for byte, a model whose KEK
was rotated and retired meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt

from edge_runtime import EdgeRuntime
from schemas import crypto
from schemas.config import Settings
from schemas.deployer import (
    CreateDeployment,
    DeployerRpc,
    DeploymentRef,
    DeploymentStatus,
    TargetSelector,
)
from schemas.events import DeploymentOutcome
from schemas.topics import Topics
from schemas.transfer import RejectionCode
from services.common.artifacts import ArtifactInfo, ArtifactStore, rotate_kek
from services.common.keys import kek_pem, load_kek, load_signing_key, signing_key_from_pem
from services.common.mqtt_admin import SERVICE_ROLE
from services.common.signing_keys import rotate_signing_key
from services.deployer.app import DeployerApp, create_service
from tests.support.deploy import (
    StaticCatalog,
    bias_model,
    deployer_settings,
    device_public_key,
    enroll_via_rpc,
    manifest_for,
    put,
)
from tests.support.deployer_env import devices


@contextlib.asynccontextmanager
async def deployer(settings: Settings, catalog: StaticCatalog) -> AsyncIterator[DeployerApp]:
    async with create_service(settings, catalog=catalog) as app:
        yield app


async def deploy_and_wait(app: DeployerApp, model: str, version: str, device_id: str) -> None:
    created = await app.bus.call(
        DeployerRpc.CREATE_DEPLOYMENT,
        CreateDeployment(model=model, version=version, target=TargetSelector(device_id=device_id)),
    )
    async with asyncio.timeout(60):
        while True:
            info = await app.bus.call(
                DeployerRpc.GET_DEPLOYMENT, DeploymentRef(deployment_id=created.deployment_id)
            )
            if info.status is DeploymentStatus.COMPLETED:
                break
            await asyncio.sleep(0.2)
    assert info.outcome is DeploymentOutcome.SUCCEEDED, info


async def test_devices_follow_signing_key_rotations(
    nats_server, mosquitto_server, mqtt_user, tmp_path: Path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = deployer_settings(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, service_user=tuple(user)
    )
    store = ArtifactStore(
        root=settings.model_repository.storage_path,
        kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )
    catalog = StaticCatalog()
    model = unique_id("m-")
    infos: dict[str, ArtifactInfo] = {}
    for version, bias in (("1.0.0", 0.1), ("2.0.0", 0.2), ("3.0.0", 0.3)):
        infos[version] = await put(store, bias_model(bias))
        catalog.add(model, version, infos[version])
    first_key = load_signing_key(settings.security)
    follower_id, sleeper_id = unique_id("follower-"), unique_id("sleeper-")

    async with deployer(settings, catalog) as app:
        for device_id in (follower_id, sleeper_id):
            await enroll_via_rpc(app.bus, tmp_path / device_id, device_id)
        follower = EdgeRuntime(tmp_path / follower_id)
        async with devices([follower]):
            await deploy_and_wait(app, model, "1.0.0", follower_id)

    # First rotation, while the devices keep their pinned key.
    one = rotate_signing_key(settings.security)
    assert one.previous_key_id == crypto.key_id(first_key.public_key())
    async with deployer(settings, catalog) as app:
        follower = EdgeRuntime(tmp_path / follower_id)
        async with devices([follower]):
            await deploy_and_wait(app, model, "2.0.0", follower_id)
            assert follower.active is not None and follower.active.version == "2.0.0"
            trusted = follower.state.trusted_key()
            assert (trusted.key_id, trusted.version) == (one.new_key_id, 1)

            # Someone holding the retired key publishes a manifest for a newer version.
            retired = signing_key_from_pem(one.retired_path.read_bytes(), one.retired_path)
            forged = manifest_for(
                store,
                infos["3.0.0"],
                device_id=follower_id,
                public_key=device_public_key(tmp_path / follower_id),
                sequence=1000,
                model=model,
                version="3.0.0",
            )
            async with aiomqtt.Client(
                mosquitto_server.host,
                mosquitto_server.port,
                username=user[0],
                password=user[1],
                identifier=f"forger-{secrets.token_hex(4)}",
            ) as client:
                await client.publish(
                    Topics(settings.mqtt.topic_prefix).desired(follower_id),
                    forged.sign(retired).to_bytes(),
                    qos=1,
                    retain=True,
                )
            await follower.wait_for(lambda rt: rt.snapshot().rejection is not None, 15)
            rejection = follower.snapshot().rejection
            assert rejection is not None and rejection.code is RejectionCode.SIGNATURE
            assert f"retired platform key {one.previous_key_id}" in rejection.detail
            assert follower.active is not None and follower.active.version == "2.0.0"

    # Second rotation; the sleeper was offline through both and still trusts the first key.
    two = rotate_signing_key(settings.security)
    assert two.version == 2
    # The KEK is rotated and retired too: the deployer keeps only the new one.
    old_kek = settings.security.encryption_key_path
    new_kek = tmp_path / "keys" / "kek-2.pem"
    new_kek.write_bytes(kek_pem(os.urandom(32)))
    during = with_security(
        settings, encryption_key_path=new_kek, previous_encryption_key_paths=(old_kek,)
    )
    keyring = load_kek(during.security)
    assert keyring is not None
    rotated = rotate_kek(ArtifactStore(root=store.root, kek=keyring, chunk_size=store.chunk_size))
    assert rotated.retired(keyring.active_id) == [crypto.kek_id(old_kek.read_bytes())]
    settings = with_security(settings, encryption_key_path=new_kek)
    async with deployer(settings, catalog) as app:
        sleeper = EdgeRuntime(tmp_path / sleeper_id)
        async with devices([sleeper]):
            await deploy_and_wait(app, model, "3.0.0", sleeper_id)
            assert sleeper.active is not None and sleeper.active.version == "3.0.0"
            trusted = sleeper.state.trusted_key()
            assert (trusted.key_id, trusted.version) == (two.new_key_id, 2)
            assert sleeper.state.retired_key_ids() == {
                one.previous_key_id,
                two.previous_key_id,
            }
            installed = sleeper.state.model_path(infos["3.0.0"].artifact_id)
            assert installed.read_bytes() == bias_model(0.3)


def with_security(settings: Settings, **values: object) -> Settings:
    security = settings.security.model_copy(update=values)
    return settings.model_copy(update={"security": security})
