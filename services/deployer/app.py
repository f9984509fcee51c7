"""The deployer service: bus, database, artifact store, MQTT link, supervisor.

``create_service(settings)`` is an async context manager that starts everything and stops it
cleanly; ``python -m services.deployer --config FILE`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import async_sessionmaker

from schemas.config import Settings
from schemas.topics import Topics
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.db import create_engine
from services.common.keys import load_kek, load_signing_key
from services.common.logging import get_logger
from services.common.migrate import upgrade
from services.common.mqtt_admin import MqttAdmin
from services.common.signing_keys import load_signing_chain
from services.deployer.catalog import Catalog, RegistryCatalog
from services.deployer.chunks import ChunkServer
from services.deployer.handlers import create_router
from services.deployer.manifests import ChunkGrants
from services.deployer.mqtt import MqttLink
from services.deployer.service import Deployer

__all__ = ["DeployerApp", "create_service"]

log = get_logger(__name__)
SHARE_GROUP = "deployer"


@dataclass
class DeployerApp:
    """What a running deployer exposes (tests and tools look inside)."""

    deployer: Deployer
    bus: Bus
    link: MqttLink
    chunks: ChunkServer


@contextlib.asynccontextmanager
async def create_service(
    settings: Settings, *, catalog: Catalog | None = None
) -> AsyncIterator[DeployerApp]:
    """Start the deployer; ``catalog`` replaces the registry (tools and tests)."""
    kek = load_kek(settings.security)
    signing_key = load_signing_key(settings.security)
    key_chain = load_signing_chain(settings.security, signing_key)
    store = ArtifactStore(
        root=settings.model_repository.storage_path,
        kek=kek,
        chunk_size=settings.deployment.chunk_size,
    )
    engine = create_engine(settings.database)
    await upgrade(engine, "services.common", "services.deployer")
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    bus = Bus(settings.nats, service="deployer")
    cfg = settings.deployer
    admin_user = cfg.admin_username or settings.mqtt.username
    admin_password = cfg.admin_password or settings.mqtt.password
    admin = MqttAdmin(
        hostname=settings.mqtt.host,
        port=settings.mqtt.port,
        username=admin_user or "",
        password=admin_password.get_secret_value() if admin_password else "",
    )
    topics = Topics(settings.mqtt.topic_prefix)
    link = MqttLink(
        settings.mqtt,
        client_id=f"eaf-deployer-{os.getpid()}-{os.urandom(3).hex()}",
        subscriptions=[
            f"$share/{SHARE_GROUP}/{topic}"
            for topic in (
                topics.all_artifact_gets(),
                topics.all_devices("state"),
                topics.all_devices("online"),
            )
        ],
    )
    grants = ChunkGrants(sessions)
    chunks = ChunkServer(store=store, topics=topics, publisher=link, authorize=grants.authorize)
    deployer = Deployer(
        settings=settings,
        sessions=sessions,
        store=store,
        signing_key=signing_key,
        key_chain=key_chain,
        bus=bus,
        catalog=catalog or RegistryCatalog(bus),
        admin=admin,
        link=link,
        chunks=chunks,
        grants=grants,
    )
    bus.include(create_router(deployer, settings.nats))

    async def supervise() -> None:
        while True:
            await asyncio.sleep(cfg.tick_interval)
            try:
                await deployer.tick()
            except Exception:
                log.exception("supervisor pass failed")

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        await admin.__aenter__()
        stack.push_async_exit(admin.__aexit__)
        await link.start(on_message=deployer.on_mqtt_message)
        stack.push_async_callback(link.stop)
        stack.push_async_callback(chunks.close)
        stack.push_async_callback(deployer.close)
        await bus.start()
        stack.push_async_callback(bus.stop)
        supervisor = asyncio.create_task(supervise())

        async def stop_supervisor() -> None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

        stack.push_async_callback(stop_supervisor)
        log.info("deployer ready", mqtt=f"{settings.mqtt.host}:{settings.mqtt.port}")
        yield DeployerApp(deployer=deployer, bus=bus, link=link, chunks=chunks)
