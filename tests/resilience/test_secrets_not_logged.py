"""No secret in any log line: the registry, validator, deployer and API run as their own
processes at DEBUG, a device enrols and runs with ``edge-runtime``, a model is uploaded,
validated and deployed, and some calls are refused on the way. Then every line every
process wrote is searched for each token, password and key, in every usual encoding."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_runtime import StateDir
from edgeaiforge_stack.servers import NatsServer
from services.common.artifacts import ArtifactStore
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.api import create_api_key
from tests.support.deploy import bias_model
from tests.support.resilience import REPO
from tests.support.servers import free_port
from tests.support.settings import platform_settings

SERVICES = ("registry", "validator", "deployer", "api")


def encodings(secret: bytes) -> set[str]:
    """The forms a secret could take in a log line."""
    forms = {secret.hex(), base64.b64encode(secret).decode().rstrip("=")}
    forms.add(base64.urlsafe_b64encode(secret).decode().rstrip("="))
    try:
        forms.add(secret.decode())
    except UnicodeDecodeError:
        pass
    return {f for f in forms if len(f) >= 12}


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


@pytest.mark.slow
async def test_tokens_passwords_and_keys_never_reach_a_log(
    mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    svc = await mqtt_user(roles=[SERVICE_ROLE])
    nats = NatsServer(data_dir=tmp_path / "nats")  # its own: default durables, no neighbours
    with nats:
        port = free_port()
        settings = platform_settings(tmp_path, nats_url=nats.url, port=port)
        env = {
            **os.environ,
            "EAF_MODEL_REPOSITORY__STORAGE_PATH": str(tmp_path / "models"),
            "EAF_MODEL_REPOSITORY__CACHE_PATH": str(tmp_path / "cache"),
            "EAF_SECURITY__ENCRYPTION_KEY_PATH": str(tmp_path / "keys" / "kek.key"),
            "EAF_SECURITY__SIGNING_KEY_PATH": str(tmp_path / "keys" / "signing.pem"),
            "EAF_SECURITY__DEV_MODE": "true",
            "EAF_NATS__URL": nats.url,
            "EAF_DATABASE__URL": settings.database.url,
            "EAF_API__HOST": "127.0.0.1",
            "EAF_API__PORT": str(port),
            "EAF_MQTT__HOST": mosquitto_server.host,
            "EAF_MQTT__PORT": str(mosquitto_server.port),
            "EAF_MQTT__USERNAME": svc.username,
            "EAF_MQTT__PASSWORD": svc.password,
            "EAF_DEPLOYER__ADMIN_USERNAME": mosquitto_server.admin_username,
            "EAF_DEPLOYER__ADMIN_PASSWORD": mosquitto_server.admin_password,
            "EAF_DEPLOYER__TICK_INTERVAL": "0.3",
            "EAF_DEPLOYER__STALL_TIMEOUT": "1.0",
            "EAF_INGESTER__METRICS_PORT": "0",
        }
        logs = tmp_path / "logs"
        logs.mkdir()
        # Keys exist before the services start, so every process reads the same ones.
        load_kek(settings.security)
        token = create_api_key(settings, role="admin", name="ops")
        procs: list[subprocess.Popen[bytes]] = []
        url = f"http://127.0.0.1:{port}"
        device_id = unique_id("dev-")
        state_dir = tmp_path / device_id
        try:
            for name in SERVICES:
                command = [sys.executable, "-m", f"services.{name}", "--log-level", "DEBUG"]
                out, err = (logs / f"{name}.out").open("wb"), (logs / f"{name}.err").open("wb")
                procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err))
            await asyncio.to_thread(wait_http, f"{url}/healthz", 60)
            secrets, deployment = await asyncio.to_thread(
                flow, url, token, device_id, state_dir, env, logs, procs, unique_id("m-")
            )
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert deployment["outcome"] == "succeeded", deployment

    # Every secret of the run, in every encoding.
    store = ArtifactStore(
        root=tmp_path / "models", kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )  # fmt: skip
    kek = (tmp_path / "keys" / "kek.key").read_bytes()
    signing = load_pem_private_key((tmp_path / "keys" / "signing.pem").read_bytes(), None)
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    enrolled = StateDir(state_dir).enrollment()
    secrets.update(
        {
            "admin API key": token.encode(),
            "service MQTT password": svc.password.encode(),
            "broker admin password": mosquitto_server.admin_password.encode(),
            "device MQTT password": enrolled.mqtt.password.encode(),
            "KEK": kek,
            "signing key": signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            "device private key": (state_dir / "device.key").read_bytes(),
            "artifact data key": store.dek(store.info(deployment["artifact_id"])),
        }
    )
    text = "\n".join(p.read_text(errors="replace") for p in sorted(logs.iterdir()))
    assert len(text.splitlines()) > 50, "the processes logged almost nothing: check the setup"
    leaks = [
        f"{what} ({form[:6]}…) in the logs"
        for what, secret in secrets.items()
        for form in encodings(secret)
        if form in text
    ]
    assert leaks == []


def flow(
    url: str, admin_token: str, device_id: str, state_dir: Path, env, logs: Path, procs,
    model: str,
) -> tuple[dict[str, bytes], dict[str, Any]]:  # fmt: skip
    """Upload, validate, enrol, deploy, with some refusals; returns the secrets it made."""
    secrets: dict[str, bytes] = {}
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"},
                         timeout=60)  # fmt: skip
    r = admin.post("/api/v1/keys", json={"name": "ci", "role": "deployer"})
    assert r.status_code == 201, r.text
    deployer_token, key_id = r.json()["token"], r.json()["key"]["key_id"]
    secrets["deployer API key"] = deployer_token.encode()
    r = admin.post("/api/v1/keys", json={"name": "old", "role": "viewer"})
    revoked_token = r.json()["token"]
    secrets["revoked API key"] = revoked_token.encode()
    admin.delete(f"/api/v1/keys/{r.json()['key']['key_id']}")
    dep = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {deployer_token}"},
                       timeout=60)  # fmt: skip
    r = dep.put(f"/api/v1/models/{model}/versions/1.0.0", content=bias_model(0.4),
                headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 201, r.text
    # Refusals: a revoked key, a role too low, a token that is not one.
    for token in (revoked_token, deployer_token, "eaf_" + "x" * 40):
        httpx.delete(f"{url}/api/v1/keys/{key_id}", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 120
    while dep.get(f"/api/v1/models/{model}/versions/1.0.0").json()["status"] not in (
        "validated", "analyzed"
    ):  # fmt: skip
        assert time.monotonic() < deadline, "validation did not finish"
        time.sleep(0.3)
    r = admin.post("/api/v1/devices/enrollment-tokens", json={"device_id": device_id})
    assert r.status_code == 201, r.text
    enrolment = r.json()["token"]
    secrets["enrolment token"] = enrolment.encode()
    cli = [sys.executable, "-m", "edge_runtime"]
    enrol = [*cli, "enroll", "--api", url, "--token", enrolment, "--device-id", device_id,
             "--state-dir", str(state_dir)]  # fmt: skip
    for attempt in range(2):  # the second time the token is used up: refused, and logged
        with (logs / f"enroll-{attempt}.out").open("wb") as out:
            subprocess.run(enrol, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                           check=False, timeout=60)  # fmt: skip
    device = subprocess.Popen(
        [*cli, "run", "--state-dir", str(state_dir), "--http", ""], cwd=REPO, env=env,
        stdout=(logs / "device.out").open("wb"), stderr=(logs / "device.err").open("wb"),
    )  # fmt: skip
    procs.append(device)
    r = dep.post("/api/v1/deployments", json={"model": model, "version": "1.0.0",
                                              "target": {"device_id": device_id}})  # fmt: skip
    assert r.status_code == 201, r.text
    deployment_id = r.json()["deployment_id"]
    deadline = time.monotonic() + 90
    while (info := dep.get(f"/api/v1/deployments/{deployment_id}").json())["status"] != (
        "completed"
    ):
        assert time.monotonic() < deadline, f"deployment did not complete: {info}"
        time.sleep(0.3)
    version = dep.get(f"/api/v1/models/{model}/versions/1.0.0").json()
    return secrets, {"outcome": info["outcome"], "artifact_id": version["artifact_id"]}
