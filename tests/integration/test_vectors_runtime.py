"""The whole edge runtime (``EdgeRuntime``) against the test vectors over real Mosquitto:
the platform side here is nothing but the vector files, published and served as the
protocol says (``docs/device-protocol.md``). The good transfer installs the exact
plaintext; each broken manifest or chunk is refused with its code, reported on the
device's state topic."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime import EdgeRuntime, StateDir, complete, prepare
from schemas.deployer import DeviceMqttSettings, EnrollReply
from schemas.keychain import RotationStatement
from schemas.topics import Topics
from schemas.transfer import ChunkRequest
from services.common.mqtt_admin import SERVICE_ROLE, device_role_acls, device_role_name
from tests.support.deploy import forget_device

V1 = Path(__file__).resolve().parents[1] / "vectors" / "v1"
VECTORS: dict[str, Any] = json.loads((V1 / "vectors.json").read_text())
KEYS = VECTORS["keys"]
DEVICE_ID = KEYS["device_id"]
TOPICS = Topics("eaf/v1")
#: The cases a running device can meet from a platform that follows the protocol: chunk
#: labels and indexes beyond the manifest are covered by tests/unit/test_vectors.py.
RUNTIME_KINDS = ("manifest", "chunk", "transfer")


def read(name: str) -> bytes:
    return (V1 / name).read_bytes()


def device_state(
    state_dir: Path,
    server: Any,
    password: str,
    sequences: dict[str, int],
    followed: list[str] | None = None,
) -> None:
    """An enrolled device holding the vectors' keys (as if enrolment had made them), that
    has followed the rotation statements ``followed`` since."""
    prepare(state_dir, device_id=DEVICE_ID, token="t" * 16)
    key_file = StateDir(state_dir).key_file
    key_file.write_bytes(bytes.fromhex(KEYS["device_private_key"]))
    complete(
        state_dir,
        EnrollReply(
            device_id=DEVICE_ID,
            mqtt=DeviceMqttSettings(
                host=server.host, port=server.port, username=DEVICE_ID,
                password=password, client_id=DEVICE_ID, topic_prefix="eaf/v1",
            ),
            platform_public_key=KEYS["platform_public_key"],
            platform_key_id=KEYS["platform_key_id"],
            window_size=8,
            stall_timeout=1.0,
        ),
    )  # fmt: skip
    if sequences:
        (state_dir / "sequences.json").write_text(json.dumps(sequences))
    state = StateDir(state_dir)
    for name in followed or []:
        statement = RotationStatement.model_validate_json(read(name))
        state.save_trust(statement.verify(state.trusted_key()), [statement])


@contextlib.asynccontextmanager
async def vector_platform(server: Any, creds: Any, case: dict[str, Any]) -> AsyncIterator[None]:
    """Publish the case's manifest (retained) and answer chunk requests from the files."""
    try:
        manifest = json.loads(base64.b64decode(json.loads(read(case["desired"]))["signed"]))
    except ValueError:  # the "not JSON" case: serve the good artifact's chunks anyway
        manifest = {"artifact_id": VECTORS["artifact_id"]}
    chunks = {i: read(f"chunks/{i}.bin") for i in range(VECTORS["chunk_count"])}
    if case["kind"] == "chunk":
        chunks[case["index"]] = read(case["chunk"])
    async with aiomqtt.Client(
        server.host, server.port, username=creds[0], password=creds[1],
        identifier=f"vector-platform-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe(f"eaf/v1/artifacts/{manifest['artifact_id']}/get", qos=1)

        async def serve() -> None:
            async for message in client.messages:
                request = ChunkRequest.model_validate_json(bytes(message.payload))
                props = message.properties
                for index in request.indexes:
                    reply = Properties(PacketTypes.PUBLISH)
                    reply.UserProperty = [
                        ("artifact", manifest["artifact_id"]),
                        ("index", str(index)),
                    ]
                    reply.CorrelationData = props.CorrelationData  # type: ignore[union-attr]
                    await client.publish(
                        props.ResponseTopic,  # type: ignore[union-attr]
                        chunks[index],
                        qos=1,
                        properties=reply,
                    )

        server_task = asyncio.create_task(serve())
        await client.publish(TOPICS.desired(DEVICE_ID), read(case["desired"]), qos=1, retain=True)
        try:
            yield
        finally:
            server_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server_task
            await client.publish(TOPICS.desired(DEVICE_ID), b"", qos=1, retain=True)


def outcome(runtime: EdgeRuntime) -> str | None:
    """``accept`` once installed, the refusal or failure code, or None while undecided."""
    state = runtime.snapshot()
    if state.active is not None and state.active.artifact_id == VECTORS["artifact_id"]:
        return "accept"
    if state.deployment is not None and state.deployment.error_code is not None:
        return state.deployment.error_code.value
    if state.rejection is not None:
        return state.rejection.code.value
    return None


async def test_the_edge_runtime_passes_every_vector(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path
) -> None:
    platform_creds = await mqtt_user(roles=[SERVICE_ROLE])
    password = secrets.token_urlsafe(16)
    role = device_role_name(DEVICE_ID)
    await mqtt_admin.create_role(role, acls=device_role_acls(DEVICE_ID))
    await mqtt_admin.create_client(DEVICE_ID, password, roles=[role], clientid=DEVICE_ID)
    results: dict[str, tuple[str, str | None]] = {}
    try:
        for n, case in enumerate(c for c in VECTORS["cases"] if c["kind"] in RUNTIME_KINDS):
            if case["kind"] == "chunk" and case["index"] >= VECTORS["chunk_count"]:
                continue
            if case["kind"] == "chunk" and case["artifact"] != VECTORS["artifact_id"]:
                continue
            state_dir = tmp_path / f"case-{n}"
            device_state(
                state_dir,
                mosquitto_server,
                password,
                case.get("sequences", {}),
                case.get("followed"),
            )
            runtime = EdgeRuntime(state_dir, reconnect_min=0.1)
            task = asyncio.create_task(runtime.run())
            try:
                async with vector_platform(mosquitto_server, platform_creds, case):
                    await asyncio.wait_for(runtime.wait_connected(), 15)
                    with contextlib.suppress(TimeoutError):
                        await runtime.wait_for(lambda r: outcome(r) is not None, 30)
                    results[case["name"]] = (case["expect"], outcome(runtime))
                    if case["expect"] == "accept":
                        installed = state_dir / "models" / f"{VECTORS['artifact_id']}.onnx"
                        assert installed.read_bytes() == read("plaintext.bin")
            finally:
                runtime.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 15)
                await forget_device(state_dir)
    finally:
        await mqtt_admin.delete_client(DEVICE_ID)
        await mqtt_admin.delete_role(role)
    wrong = {name: got for name, got in results.items() if got[0] != got[1]}
    assert wrong == {}, f"(expected, got) per case: {wrong}"
    assert len(results) >= 16
