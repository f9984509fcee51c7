"""Commands on ``eaf.cmd.>`` against the real services, each logged in as its own NATS user
of the project's server config: an integrator's command does exactly what the REST route
does, a bad or unauthorised one gets an error and changes nothing."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from edge_runtime import EdgeRuntime
from schemas.commands import CommandRpc
from schemas.config import NatsConfig, Settings
from services.analyzer.app import create_service as create_analyzer
from services.api.app import create_api_server
from services.common.bus import Bus
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from services.registry.app import create_service as create_registry
from services.validator.app import create_service as create_validator
from tests.support.api import new_api_key
from tests.support.deploy import bias_model, enroll_via_rpc, platform_on_broker, running

S = CommandRpc


async def login(nats_server: Any, user: str) -> NatsClient:
    """A plain nats-py client as ``user``, replies under the user's own inbox prefix."""
    return await nats.connect(
        nats_server.plain_url,
        user=user,
        password=nats_server.password_for(user),
        inbox_prefix=f"_INBOX.{user}",
        allow_reconnect=False,
    )


async def command(nc: NatsClient, subject: str, body: dict[str, Any] | bytes) -> Any:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await nc.request(subject, payload, timeout=10)
    return json.loads(reply.data)


@dataclass
class Platform:
    settings: Settings
    http: httpx.AsyncClient
    admin_bus: Bus
    stack: AsyncExitStack
    as_user: Callable[[str], Settings]
    events: list[Msg] = field(default_factory=list)


@asynccontextmanager
async def platform(
    tmp_path: Path, nats_server: Any, nats_config: Any, mosquitto: Any, mqtt_creds: Any
) -> AsyncIterator[Platform]:
    """Registry, deployer and API, each as its own NATS user; an observer records every
    deployment event."""
    base = platform_on_broker(
        tmp_path, nats_url=nats_server.plain_url, mosquitto=mosquitto, user=mqtt_creds
    )

    def as_user(user: str) -> Settings:
        cfg: NatsConfig = nats_config(user, request_timeout=5.0, retry_backoff=[0.5])
        return base.model_copy(update={"nats": cfg})

    async with AsyncExitStack() as stack:
        observer = await login(nats_server, "observer")
        stack.push_async_callback(observer.close)
        events: list[Msg] = []

        async def record(msg: Msg) -> None:
            events.append(msg)

        await observer.subscribe("eaf.deployment.>", cb=record)
        await stack.enter_async_context(create_registry(as_user("registry")))
        await stack.enter_async_context(create_deployer(as_user("deployer")))
        await stack.enter_async_context(create_api_server(as_user("api")))
        admin_bus = await stack.enter_async_context(
            Bus(NatsConfig(url=nats_server.url), service="test-admin")
        )
        token = await new_api_key(base, role="admin", name="rest-user")
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://{base.api.host}:{base.api.port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
        )
        yield Platform(base, http, admin_bus, stack, as_user, events)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def story(events: list[Msg], deployment_id: str) -> list[tuple[str, str]]:
    """The deployment's events as (subject, state or outcome), repeats collapsed."""
    out: list[tuple[str, str]] = []
    for msg in events:
        body = json.loads(msg.data)
        if body.get("deployment_id") != deployment_id:
            continue
        step = (msg.subject, str(body.get("state") or body.get("outcome") or ""))
        if not out or out[-1] != step:
            out.append(step)
    return out


def comparable(info: dict[str, Any]) -> dict[str, Any]:
    """A deployment's final state without what must differ (ids, times, device, creator)."""
    targets = [
        {k: v for k, v in t.items() if k not in ("device_id", "updated_at", "notified_at")}
        for t in info["targets"]
    ]
    drop = ("deployment_id", "created_at", "updated_at", "completed_at", "created_by")
    return {**{k: v for k, v in info.items() if k not in drop}, "targets": targets}


async def test_integrator_starts_a_deployment_that_runs_like_one_from_rest(
    nats_server, nats_config, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    creds = await mqtt_user(roles=[SERVICE_ROLE])
    name, rest_dev, cmd_dev = unique_id("m-"), unique_id("dev-"), unique_id("dev-")
    model = bias_model(0.25)
    async with platform(tmp_path, nats_server, nats_config, mosquitto_server, creds) as p:
        await p.stack.enter_async_context(
            create_validator(p.as_user("validator"), durable=unique_id("validator-"))
        )
        await p.stack.enter_async_context(
            create_analyzer(p.as_user("analyzer"), durable=unique_id("analyzer-"))
        )
        integrator = await login(nats_server, "integrator")
        p.stack.push_async_callback(integrator.close)

        # The bytes go up over HTTP; the version is registered by a command.
        stored = (await p.http.post("/api/v1/artifacts", content=model)).json()
        registered = await command(
            integrator,
            S.REGISTER_VERSION.subject,
            {"actor": "ci:train", "model": name, "version": "1.0.0",
             "artifact_id": stored["artifact_id"], "size_bytes": stored["size_bytes"],
             "metadata": {"task": "Regression", "tags": ["nightly"]}},
        )  # fmt: skip
        assert registered["uploaded_by"] == "ci:train"
        assert registered["metadata"]["tags"] == ["nightly"]

        async def validated() -> bool:
            r = await p.http.get(f"/api/v1/models/{name}/versions/1.0.0")
            return r.json()["status"] in ("validated", "analyzed")

        await wait_for(validated, "validation")
        alias = await command(
            integrator,
            S.SET_ALIAS.subject,
            {"actor": "ci:release", "model": name, "alias": "production", "version": "1.0.0"},
        )
        assert alias == {"model": name, "alias": "production", "version": "1.0.0",
                         "previous_version": None}  # fmt: skip

        runtimes = []
        for device_id in (rest_dev, cmd_dev):
            await enroll_via_rpc(p.admin_bus, tmp_path / device_id, device_id)
            runtimes.append(
                await p.stack.enter_async_context(running(EdgeRuntime(tmp_path / device_id)))
            )

        spec = {"model": name, "version": "production", "strategy": "waves", "waves": ["100%"]}
        by_rest = await p.http.post(
            "/api/v1/deployments", json={**spec, "target": {"device_id": rest_dev}}
        )
        assert by_rest.status_code == 201, by_rest.text
        by_cmd = await command(
            integrator,
            S.CREATE_DEPLOYMENT.subject,
            {**spec, "target": {"device_id": cmd_dev}, "actor": "ci:release"},
        )
        assert by_cmd["created_by"] == "ci:release"

        async def finished(deployment_id: str) -> dict[str, Any] | None:
            info: dict[str, Any] = (await p.http.get(f"/api/v1/deployments/{deployment_id}")).json()
            return info if info["status"] == "completed" else None

        rest_final = await wait_for(lambda: finished(by_rest.json()["deployment_id"]), "REST")
        cmd_final = await wait_for(lambda: finished(by_cmd["deployment_id"]), "command")
        await asyncio.sleep(0.5)  # let the observer receive the last events

        async def analyzed() -> bool:
            r = await p.http.get(f"/api/v1/models/{name}/versions/1.0.0")
            status: str = r.json()["status"]
            return status == "analyzed"

        await wait_for(analyzed, "analysis")  # the analyzer, as its own user, got through
        rest_story = story(p.events, rest_final["deployment_id"])
        cmd_story = story(p.events, cmd_final["deployment_id"])
        devices = {
            d: (await p.http.get(f"/api/v1/devices/{d}")).json() for d in (rest_dev, cmd_dev)
        }

    assert cmd_final["outcome"] == "succeeded"
    assert comparable(cmd_final) == comparable(rest_final)
    assert cmd_story == rest_story
    assert cmd_story[0] == ("eaf.deployment.created", "")
    assert cmd_story[-1] == ("eaf.deployment.completed", "succeeded")
    for device in devices.values():
        assert (device["active_model"], device["active_version"]) == (name, "1.0.0")


async def test_bad_or_unauthorised_commands_get_errors_and_change_nothing(
    nats_server, nats_config, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    creds = await mqtt_user(roles=[SERVICE_ROLE])
    name = unique_id("m-")
    async with platform(tmp_path, nats_server, nats_config, mosquitto_server, creds) as p:
        integrator = await login(nats_server, "integrator")
        p.stack.push_async_callback(integrator.close)
        stored = (await p.http.post("/api/v1/artifacts", content=bias_model(0.5))).json()
        good = {
            "actor": "ci",
            "model": name,
            "version": "1.0.0",
            "artifact_id": stored["artifact_id"],
            "size_bytes": stored["size_bytes"],
        }

        not_json = await command(integrator, S.REGISTER_VERSION.subject, b"{not json")
        no_actor = await command(integrator, S.REGISTER_VERSION.subject, {**good, "actor": ""})
        unknown_field = await command(
            integrator, S.REGISTER_VERSION.subject, {**good, "admin": True}
        )
        wrong_size = await command(
            integrator, S.REGISTER_VERSION.subject, {**good, "size_bytes": 1}
        )
        no_version = await command(
            integrator,
            S.CREATE_DEPLOYMENT.subject,
            {"actor": "ci", "model": name, "version": "1.0.0", "target": {"device_id": "d1"}},
        )
        creator = await command(
            integrator,
            S.CREATE_DEPLOYMENT.subject,
            {"actor": "ci", "model": name, "version": "1.0.0", "target": {"device_id": "d1"},
             "created_by": "someone-else"},
        )  # fmt: skip
        no_deployment = await command(
            integrator,
            S.PAUSE_DEPLOYMENT.subject,
            {"actor": "ci", "deployment_id": "00000000-0000-0000-0000-000000000000"},
        )
        for reply in (not_json, no_actor, unknown_field, creator):
            assert reply["error"]["code"] == "invalid", reply
            assert reply["error"]["status"] == 422
        assert "actor" in no_actor["error"]["detail"]
        assert "created_by" in creator["error"]["detail"]
        assert wrong_size["error"]["code"] == "invalid", wrong_size
        assert "holds" in wrong_size["error"]["detail"]
        assert no_version["error"]["status"] == 404, no_version
        assert no_deployment["error"]["status"] == 404, no_deployment

        # An observer's command never reaches the registry: the server refuses it.
        observer = await login(nats_server, "observer")
        refused: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            refused.append(exc)

        observer._error_cb = on_error  # the client's error callback, set after connecting
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await observer.request(S.REGISTER_VERSION.subject, json.dumps(good).encode(), timeout=1)
        await observer.close()

        served = (await p.http.get("/asyncapi", headers={"Authorization": ""})).json()
        assert set(served["channels"]) >= {S.CREATE_DEPLOYMENT.subject, S.REGISTER_VERSION.subject}
        models = (await p.http.get("/api/v1/models", params={"prefix": name})).json()
        deployments = (await p.http.get("/api/v1/deployments", params={"model": name})).json()
    assert any("permissions violation" in str(e).lower() for e in refused), refused
    assert models["items"] == []
    assert deployments["deployments"] == []


def load_example(name: str) -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_examples_release_a_model_to_the_walkthrough_device(
    nats_server, nats_config, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    """examples/pipeline_release.py rolls a new version out to a device that is
    examples/device_walkthrough.py (paho-mqtt and the protocol document only)."""
    pipeline, walkthrough = load_example("pipeline_release"), load_example("device_walkthrough")
    for example in (pipeline, walkthrough):
        with pytest.raises(SystemExit) as shown:
            example.main(["--help"])
        assert shown.value.code == 0
    creds = await mqtt_user(roles=[SERVICE_ROLE])
    name, device_id, site = unique_id("m-"), unique_id("dev-"), unique_id("site-")
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(bias_model(0.125))
    async with platform(tmp_path, nats_server, nats_config, mosquitto_server, creds) as p:
        await p.stack.enter_async_context(
            create_validator(p.as_user("validator"), durable=unique_id("validator-"))
        )
        url = str(p.http.base_url).rstrip("/")
        token = (
            await p.http.post(
                "/api/v1/devices/enrollment-tokens",
                json={"device_id": device_id, "labels": {"site": site}},
            )
        ).json()["token"]
        state_dir = tmp_path / device_id
        device = asyncio.create_task(
            asyncio.to_thread(
                walkthrough.main,
                ["--api", url, "--token", token, "--device-id", device_id,
                 "--state-dir", str(state_dir), "--once", "--timeout", "90"],
            )
        )  # fmt: skip

        async def enrolled() -> bool:
            return (await p.http.get(f"/api/v1/devices/{device_id}")).status_code == 200

        await wait_for(enrolled, "enrolment")
        args = pipeline.parse_args(
            [str(model_file), "--name", name, "--version", "2.0.0", "--nats",
             nats_server.plain_url, "--api", url, "--labels", f"site={site}",
             "--waves", "1,100%", "--timeout", "90"]
        )  # fmt: skip
        succeeded = await pipeline.release(
            args,
            password=nats_server.password_for("integrator"),
            api_token=p.http.headers["Authorization"].removeprefix("Bearer "),
        )
        exit_code = await asyncio.wait_for(device, 60)
        shown_device = (await p.http.get(f"/api/v1/devices/{device_id}")).json()
        alias = (await p.http.get(f"/api/v1/models/{name}/versions/candidate")).json()
        await forget_device_topics(mosquitto_server, creds, state_dir)
    assert succeeded
    assert exit_code == 0
    assert (shown_device["active_model"], shown_device["active_version"]) == (name, "2.0.0")
    assert alias["version"] == "2.0.0"
    digest = alias["artifact_id"]
    assert (state_dir / "models" / f"{digest}.onnx").read_bytes() == model_file.read_bytes()


async def forget_device_topics(server: Any, creds: Any, state_dir: Path) -> None:
    """Clear the walkthrough device's retained topics on the shared broker: its own as the
    device, ``desired`` as the platform."""
    import aiomqtt

    device = json.loads((state_dir / "device.json").read_text())
    prefix = f"eaf/v1/devices/{device['device_id']}"
    mqtt = device["mqtt"]
    logins = [
        (mqtt["username"], mqtt["password"], mqtt["client_id"], ("state", "online")),
        (creds[0], creds[1], None, ("desired",)),
    ]
    for username, password, client_id, kinds in logins:
        async with aiomqtt.Client(
            server.host, server.port, username=username, password=password,
            identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:  # fmt: skip
            for kind in kinds:
                await client.publish(f"{prefix}/{kind}", b"", qos=1, retain=True)


async def test_retried_creates_and_rollbacks_start_one_deployment(
    nats_server, nats_config, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    """The idempotency key: ``request_id`` in a command, ``Idempotency-Key`` in REST and
    the SDK. A repeat answers the first deployment; the key with another request is 409."""
    from edgeaiforge import ConflictError, ModelManager

    creds = await mqtt_user(roles=[SERVICE_ROLE])
    name, device_id = unique_id("m-"), unique_id("dev-")
    async with platform(tmp_path, nats_server, nats_config, mosquitto_server, creds) as p:
        await p.stack.enter_async_context(
            create_validator(p.as_user("validator"), durable=unique_id("validator-"))
        )
        integrator = await login(nats_server, "integrator")
        p.stack.push_async_callback(integrator.close)
        put = await p.http.put(f"/api/v1/models/{name}/versions/1.0.0", content=bias_model(0.75))
        assert put.status_code == 201, put.text

        async def validated() -> bool:
            r = await p.http.get(f"/api/v1/models/{name}/versions/1.0.0")
            return r.json()["status"] in ("validated", "analyzed")

        await wait_for(validated, "validation")
        await enroll_via_rpc(p.admin_bus, tmp_path / device_id, device_id)
        spec = {"model": name, "version": "1.0.0", "target": {"device_id": device_id}}

        # Commands: the same command twice is one deployment, the same answer.
        cmd = {**spec, "actor": "ci:release", "request_id": "release-1"}
        first = await command(integrator, S.CREATE_DEPLOYMENT.subject, cmd)
        again = await command(integrator, S.CREATE_DEPLOYMENT.subject, cmd)
        assert "error" not in first, first
        assert again["deployment_id"] == first["deployment_id"]
        assert set(again) == set(first)  # a plain DeploymentInfo, no extra field
        other = await command(
            integrator, S.CREATE_DEPLOYMENT.subject, {**cmd, "auto_rollback": True}
        )
        assert other["error"]["code"] == "conflict", other
        assert "release-1" in other["error"]["detail"]
        bad_key = await command(
            integrator, S.CREATE_DEPLOYMENT.subject, {**cmd, "request_id": "a b"}
        )
        assert bad_key["error"]["code"] == "invalid", bad_key

        # REST: 201, then 200 with the same deployment; another body is 409.
        key = {"Idempotency-Key": "rest-1"}
        created = await p.http.post("/api/v1/deployments", json=spec, headers=key)
        repeated = await p.http.post("/api/v1/deployments", json=spec, headers=key)
        assert created.status_code == 201, created.text
        assert "idempotent-replayed" not in created.headers
        assert repeated.status_code == 200, repeated.text
        assert repeated.headers["idempotent-replayed"] == "true"
        assert repeated.json()["deployment_id"] == created.json()["deployment_id"]
        assert set(repeated.json()) == set(created.json())
        changed = await p.http.post(
            "/api/v1/deployments", json={**spec, "error_threshold": 0.5}, headers=key
        )
        assert changed.status_code == 409, changed.text
        assert "different fields" in changed.json()["detail"]
        # A command's key and a REST key are one space: the command's creator differs.
        crossed = await p.http.post(
            "/api/v1/deployments", json=spec, headers={"Idempotency-Key": "release-1"}
        )
        assert crossed.status_code == 409, crossed.text
        in_body = await p.http.post("/api/v1/deployments", json={**spec, "request_id": "x"})
        assert in_body.status_code == 422, in_body.text
        # The REST body has no such field (the key is the header): refused, naming it.
        assert "request_id" in in_body.json()["detail"]
        malformed = await p.http.post(
            "/api/v1/deployments", json=spec, headers={"Idempotency-Key": "no spaces"}
        )
        assert malformed.status_code == 422, malformed.text
        unkeyed = [(await p.http.post("/api/v1/deployments", json=spec)) for _ in range(2)]
        assert [r.status_code for r in unkeyed] == [201, 201]
        assert unkeyed[0].json()["deployment_id"] != unkeyed[1].json()["deployment_id"]

        # The SDK sends a key of its own per call, or the caller's.
        url = str(p.http.base_url).rstrip("/")
        api_token = p.http.headers["Authorization"].removeprefix("Bearer ")

        def sdk() -> tuple[str, str, str, str]:
            with ModelManager(url, api_token) as mm:
                a = mm.deploy_model(name, device_id, version="1.0.0", request_id="sdk-1")
                b = mm.deploy_model(name, device_id, version="1.0.0", request_id="sdk-1")
                c = mm.deploy_model(name, device_id, version="1.0.0")
                try:
                    mm.deploy_model(name, device_id, version="1.0.0", request_id="rest-1",
                                    auto_rollback=True)  # fmt: skip
                except ConflictError as exc:
                    refused = exc.detail
                return a.deployment_id, b.deployment_id, c.deployment_id, refused

        a, b, c, refused = await asyncio.to_thread(sdk)
        assert a == b != c
        assert "already used" in refused
        listed = (await p.http.get("/api/v1/deployments", params={"model": name})).json()
    ids = {d["deployment_id"] for d in listed["deployments"]}
    expected = {first["deployment_id"], created.json()["deployment_id"], a, c}
    assert ids == expected | {r.json()["deployment_id"] for r in unkeyed}
    assert len(ids) == 6


async def test_a_retried_rollback_by_rest_or_command_makes_one_rollback(
    nats_server, nats_config, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    creds = await mqtt_user(roles=[SERVICE_ROLE])
    name, device_id = unique_id("m-"), unique_id("dev-")
    async with platform(tmp_path, nats_server, nats_config, mosquitto_server, creds) as p:
        await p.stack.enter_async_context(
            create_validator(p.as_user("validator"), durable=unique_id("validator-"))
        )
        integrator = await login(nats_server, "integrator")
        p.stack.push_async_callback(integrator.close)
        for version, bias in (("1.0.0", 0.1), ("2.0.0", 0.2)):
            put = await p.http.put(
                f"/api/v1/models/{name}/versions/{version}", content=bias_model(bias)
            )
            assert put.status_code == 201, put.text
        for version in ("1.0.0", "2.0.0"):

            async def validated(version: str = version) -> bool:
                r = await p.http.get(f"/api/v1/models/{name}/versions/{version}")
                return r.json()["status"] in ("validated", "analyzed")

            await wait_for(validated, f"validation of {version}")
        await enroll_via_rpc(p.admin_bus, tmp_path / device_id, device_id)
        await p.stack.enter_async_context(running(EdgeRuntime(tmp_path / device_id)))

        async def finished(deployment_id: str) -> dict[str, Any] | None:
            info: dict[str, Any] = (await p.http.get(f"/api/v1/deployments/{deployment_id}")).json()
            return info if info["status"] == "completed" else None

        for version in ("1.0.0", "2.0.0"):
            made = await p.http.post(
                "/api/v1/deployments",
                json={"model": name, "version": version, "target": {"device_id": device_id}},
            )
            assert made.status_code == 201, made.text
            v2 = made.json()["deployment_id"]
            done = await wait_for(functools.partial(finished, v2), version)
            assert done["outcome"] == "succeeded", done

        key = {"Idempotency-Key": "undo-v2"}
        first = await p.http.post(f"/api/v1/deployments/{v2}/rollback", headers=key)
        again = await p.http.post(f"/api/v1/deployments/{v2}/rollback", headers=key)
        by_cmd = await command(
            integrator,
            S.ROLLBACK_DEPLOYMENT.subject,
            {"actor": "ci:undo", "deployment_id": v2, "request_id": "undo-v2"},
        )
        other = await command(
            integrator,
            S.ROLLBACK_DEPLOYMENT.subject,
            {"actor": "ci:undo", "deployment_id": v2, "request_id": "undo-v2-b"},
        )
        assert first.status_code == 200, first.text
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        rollback_id = first.json()["deployment_id"]
        assert first.json()["kind"] == "rollback"
        assert again.json()["deployment_id"] == by_cmd["deployment_id"] == rollback_id
        # A new key is a new request: nothing is left to roll back.
        assert other["error"]["code"] == "conflict", other
        await wait_for(lambda: finished(rollback_id), "the rollback")
        listed = (await p.http.get("/api/v1/deployments", params={"model": name})).json()
    kinds = sorted(d["kind"] for d in listed["deployments"])
    assert kinds == ["deploy", "deploy", "rollback"]
