"""Helpers for the deployment tests: small ONNX models, device enrolment on the real
broker without the deployer, manifests, and a chunk server whose bytes can be tampered.

    from tests.support.deploy import bias_model, enroll_device, signed_manifest, ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper
from paho.mqtt.properties import Properties

from edge_runtime import EdgeRuntime, complete, prepare
from schemas import crypto
from schemas.config import MqttConfig, Settings
from schemas.deployer import DeviceMqttSettings, EnrollReply
from schemas.manifest import Manifest
from schemas.topics import Topics
from services.common.artifacts import ArtifactInfo, ArtifactStore
from services.common.mqtt_admin import MqttAdmin, device_role_acls, device_role_name
from services.deployer.chunks import ChunkServer
from services.deployer.mqtt import MqttLink
from tests.support.settings import platform_settings

PREFIX = "eaf/v1"
TOPICS = Topics(PREFIX)


def bias_model(bias: float = 0.5, *, width: int = 4, nan: bool = False) -> bytes:
    """``y = relu(x + b)`` (float32[1, width]); each ``bias`` gives different bytes.

    ``nan=True`` gives a model that loads but answers NaN (``sqrt(-|x| - 1)``): it fails
    the device's health inference.
    """
    b = numpy_helper.from_array(np.full([width], bias, dtype=np.float32), "b")
    if nan:
        nodes = [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Neg", ["a"], ["n"]),
            helper.make_node("Sub", ["n", "b"], ["s"]),
            helper.make_node("Sqrt", ["s"], ["y"]),
        ]
        b = numpy_helper.from_array(np.full([width], abs(bias) + 1, dtype=np.float32), "b")
    else:
        nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def padded_model(size_bytes: int, *, seed: int = 0) -> bytes:
    """A valid model of about ``size_bytes`` (an unused large initializer)."""
    rng = np.random.default_rng(seed)
    pad = numpy_helper.from_array(
        rng.integers(0, 255, size=max(1, size_bytes), dtype=np.uint8), "pad"
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [pad],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


async def put(store: ArtifactStore, data: bytes) -> ArtifactInfo:
    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    return (await store.put(stream())).info


def service_mqtt(server: Any, username: str, password: str) -> MqttConfig:
    return MqttConfig.model_validate(
        {"host": server.host, "port": server.port, "username": username, "password": password}
    )


async def enroll_device(
    admin: MqttAdmin,
    server: Any,
    state_dir: Path,
    device_id: str,
    signing_key: Ed25519PrivateKey,
    *,
    window: int = 8,
    stall: float = 1.0,
) -> EnrollReply:
    """What the deployer's enrolment does, done directly: broker client + role, key pair."""
    password = secrets.token_urlsafe(16)
    role = device_role_name(device_id)
    await admin.create_role(role, acls=device_role_acls(device_id))
    await admin.create_client(device_id, password, roles=[role], clientid=device_id)
    request = prepare(state_dir, device_id=device_id, token="t" * 16)
    public = signing_key.public_key()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    reply = EnrollReply(
        device_id=device_id,
        mqtt=DeviceMqttSettings(
            host=server.host,
            port=server.port,
            username=device_id,
            password=password,
            client_id=device_id,
            topic_prefix=PREFIX,
        ),
        platform_public_key=base64.b64encode(
            public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode(),
        platform_key_id=crypto.key_id(public),
        window_size=window,
        stall_timeout=stall,
    )
    assert request.device_id == device_id
    complete(state_dir, reply)
    return reply


def device_public_key(state_dir: Path) -> bytes:
    from edge_runtime import StateDir

    return StateDir(state_dir).public_key_raw()


def manifest_for(
    store: ArtifactStore,
    info: ArtifactInfo,
    *,
    device_id: str,
    public_key: bytes,
    sequence: int,
    deployment_id: str | None = None,
    model: str = "m",
    version: str = "1.0.0",
    ttl: int = 3600,
    seal_for: str | None = None,
    **overrides: Any,
) -> Manifest:
    """A manifest exactly as the deployer makes it (``overrides`` change any field)."""
    now = int(time.time())
    dek = store.dek(info)
    sealed = crypto.seal_dek(
        dek, public_key, device_id=seal_for or device_id, artifact_id=info.artifact_id
    )
    fields: dict[str, Any] = {
        "device_id": device_id,
        "deployment_id": deployment_id or str(uuid.uuid4()),
        "model": model,
        "version": version,
        "sequence": sequence,
        "issued_at": now,
        "expires_at": now + ttl,
        "artifact_id": info.artifact_id,
        "size": info.size,
        "chunk_size": info.chunk_size,
        "chunk_count": info.chunk_count,
        "encrypted": True,
        "nonce_prefix": base64.b64encode(info.nonce_prefix).decode(),
        "sealed_key": base64.b64encode(sealed).decode(),
    }
    fields.update(overrides)
    return Manifest.model_validate(fields)


Tamper = Callable[[str, bytes, Properties | None], tuple[bytes, Properties | None] | None]


@dataclass
class TamperingPublisher:
    """Publishes through ``link``; ``tamper`` may change or drop (None) each chunk."""

    link: MqttLink
    tamper: Tamper | None = None
    sent: int = 0
    #: Seconds to hold each chunk: slows a transfer down enough to interrupt it.
    delay: float = 0.0

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, properties: Properties | None = None
    ) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.tamper is not None:
            changed = self.tamper(topic, payload, properties)
            if changed is None:
                return
            payload, properties = changed
        self.sent += 1
        with contextlib.suppress(aiomqtt.MqttError, Exception):
            await self.link.publish(topic, payload, qos=qos, properties=properties, timeout=5)


@dataclass
class FakePlatform:
    """The platform side of a transfer without the deployer: a chunk server and a signer."""

    store: ArtifactStore
    link: MqttLink
    server: ChunkServer
    publisher: TamperingPublisher
    signing_key: Ed25519PrivateKey
    allowed: set[tuple[str, str]] = field(default_factory=set)

    async def publish_manifest(self, manifest: Manifest, *, key: Ed25519PrivateKey | None = None):
        self.allowed.add((manifest.device_id, manifest.artifact_id))
        signed = manifest.sign(key or self.signing_key)
        await self.link.publish(
            TOPICS.desired(manifest.device_id), signed.to_bytes(), qos=1, retain=True
        )

    async def publish_raw(self, device_id: str, payload: bytes) -> None:
        await self.link.publish(TOPICS.desired(device_id), payload, qos=1, retain=True)


@contextlib.asynccontextmanager
async def fake_platform(
    config: MqttConfig, store: ArtifactStore, signing_key: Ed25519PrivateKey
) -> AsyncIterator[FakePlatform]:
    link = MqttLink(
        config,
        client_id=f"fake-platform-{uuid.uuid4().hex[:8]}",
        subscriptions=[f"$share/deployer/{PREFIX}/artifacts/+/get"],
    )
    publisher = TamperingPublisher(link)
    platform = FakePlatform(store, link, None, publisher, signing_key)  # type: ignore[arg-type]

    async def authorize(device: str, artifact: str) -> bool:
        return (device, artifact) in platform.allowed

    server = ChunkServer(store=store, topics=TOPICS, publisher=publisher, authorize=authorize)
    platform.server = server

    async def on_message(message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        server.handle(str(message.topic), payload, message.properties)

    await link.start(on_message=on_message)
    try:
        yield platform
    finally:
        await server.close()
        await link.stop()


async def forget_device(state_dir: Path) -> None:
    """Clear the device's retained ``state`` and ``online`` (as the device itself).

    The broker is shared by every test, and Mosquitto 2.0.11 hands retained messages to
    new shared subscriptions too: a test must not leave device state behind for others.
    """
    from edge_runtime import StateDir

    reply = StateDir(state_dir).enrollment()
    with contextlib.suppress(aiomqtt.MqttError):
        async with aiomqtt.Client(
            reply.mqtt.host,
            reply.mqtt.port,
            username=reply.mqtt.username,
            password=reply.mqtt.password,
            identifier=reply.mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
        ) as client:
            for topic in (TOPICS.state(reply.device_id), TOPICS.online(reply.device_id)):
                await client.publish(topic, b"", qos=1, retain=True)


@contextlib.asynccontextmanager
async def running(runtime: EdgeRuntime, *, forget: bool = True) -> AsyncIterator[EdgeRuntime]:
    """``runtime`` running until the block ends; then, unless ``forget=False`` (a device
    that can no longer log in), its retained topics are cleared."""
    task = asyncio.create_task(runtime.run())
    try:
        await asyncio.wait_for(runtime.wait_connected(), 15)
        yield runtime
    finally:
        runtime.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        if forget:
            await forget_device(runtime.state.root)


# ---- the deployer in-process ------------------------------------------------------------


class StaticCatalog:
    """A registry stand-in: versions put here resolve (the deployer's ``Catalog``)."""

    def __init__(self) -> None:
        from services.deployer.catalog import VersionToDeploy

        self.versions: dict[tuple[str, str], VersionToDeploy] = {}

    def add(
        self,
        model: str,
        version: str,
        info: ArtifactInfo,
        *,
        status: str = "validated",
        requirements: Any = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        from services.deployer.catalog import VersionToDeploy

        entry = VersionToDeploy(model, version, info.artifact_id, info.size, status, requirements)
        self.versions[(model, version)] = entry
        for alias in aliases:
            self.versions[(model, alias)] = entry

    async def resolve(self, model: str, ref: str) -> Any:
        from services.common.errors import NotFound

        entry = self.versions.get((model, ref.removeprefix("@")))
        if entry is None:
            raise NotFound(f"{model}@{ref} is not in the registry")
        return entry


def deployer_settings(
    tmp_path: Path,
    *,
    nats_url: str,
    mosquitto: Any,
    service_user: tuple[str, str],
    chunk_size: int = 262144,
    device_timeout: float = 20.0,
    **deployer: Any,
) -> Any:
    return platform_settings(
        tmp_path,
        nats_url=nats_url,
        database_file="deployer.db",
        broker=mosquitto,
        mqtt_user=service_user,
        deployment={
            "chunk_size": chunk_size,
            "default_device_timeout": device_timeout,
            "window_size": 16,
        },
        deployer={"tick_interval": 0.2, "stall_timeout": 1.0, **deployer},
    )


async def enroll_via_rpc(
    bus: Any, state_dir: Path, device_id: str, *, group: str | None = None,
    labels: dict[str, str] | None = None, capabilities: Any = None,
) -> EnrollReply:  # fmt: skip
    """Enrolment as ``edge-runtime enroll`` does it, with the REST hop replaced by the RPC."""
    from schemas.deployer import CreateEnrollmentToken, DeployerRpc

    token = await bus.call(
        DeployerRpc.CREATE_ENROLLMENT_TOKEN,
        CreateEnrollmentToken(device_id=device_id, group=group, labels=labels or {}),
    )
    request = prepare(state_dir, device_id=device_id, token=token.token)
    if capabilities is not None:
        request = request.model_copy(update={"capabilities": capabilities})
    reply: EnrollReply = await bus.call(DeployerRpc.ENROLL, request)
    complete(state_dir, reply)
    return reply


def platform_on_broker(
    tmp_path: Path, *, nats_url: str, mosquitto: Any, user: Any, **sections: Any
) -> Settings:
    """``platform_settings`` with the test broker: the services' MQTT account ``user``
    (username, password), the deployer as the broker's admin, fast ticks; more sections
    (or deployer keys) as keyword arguments."""
    deployer = {"tick_interval": 0.2, "stall_timeout": 1.0, **sections.pop("deployer", {})}
    return platform_settings(
        tmp_path, nats_url=nats_url, broker=mosquitto, mqtt_user=(user[0], user[1]),
        deployer=deployer, **sections,
    )  # fmt: skip
