"""``docker-compose.yml`` checked without Docker (the build machine has none).

It must parse, mount only files that exist, run only modules that exist, publish no port
twice, give NATS a password for every user of the project's config and each service its
own user, name hosts that ``config/docker.toml`` (loaded by the real loader) agrees with,
and mount the Mosquitto config that the template renders today.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from edgeaiforge_stack.servers import NATS_SERVICE_USERS, NATS_USERS, docker_mosquitto_config
from edgeaiforge_stack.stack import SERVICES
from services.common.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENGINES = {"nats", "mosquitto", "influxdb", "postgres", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    entry = service.get("entrypoint", [])
    parts = [*(entry if isinstance(entry, list) else [entry])]
    parts += command if isinstance(command, list) else shlex.split(command)
    return [str(p) for p in parts]


def test_every_component_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert ENGINES | set(SERVICES) | {"devices"} <= set(services)
    for name in (*ENGINES, *SERVICES):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_mounted_and_built_files_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in named, f"{name} uses volume {source!r}, not declared"
        if "build" in service:
            context = ROOT / str(service["build"])
            assert (context / "Dockerfile").is_file()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_every_command_names_a_real_module(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        words = " ".join(_command(service)).split()
        for k, word in enumerate(words[:-1]):
            if word == "-m" and words[k - 1] == "python":
                module = words[k + 1]
                assert importlib.util.find_spec(module) is not None, f"{name}: no {module}"
                checked += 1
    for name in SERVICES:
        assert _command(services[name]) == ["python", "-m", f"services.{name}"]
    assert checked >= len(SERVICES) + 3  # and keys, provision, the health checks' helper


def test_published_ports_do_not_clash(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            assert host not in published, f"{name} and {published.get(host)} both publish {host}"
            published[host] = name
    assert {"8000", "1883", "4222", "3000"} <= set(published)


def test_nats_users_and_passwords(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert "/etc/nats/nats-server.conf" in _command(nats)
    assert set(nats["environment"]) == {f"EAF_NATS_{u.upper()}_PASSWORD" for u in NATS_USERS}
    for name in NATS_SERVICE_USERS:
        env = services[name]["environment"]
        assert env["EAF_NATS__USER"] == name
        variable = f"EAF_NATS_{name.upper()}_PASSWORD"
        # The same variable and default feed the server and the service.
        assert env["EAF_NATS__PASSWORD"] == nats["environment"][variable]


def test_docker_config_loads_and_names_compose_hosts(services: dict[str, dict[str, Any]]) -> None:
    settings = load_settings(ROOT / "config" / "docker.toml")
    hosts = {
        urlsplit(settings.nats.url).hostname,
        settings.mqtt.host,
        urlsplit(settings.influxdb.url).hostname,
        urlsplit(settings.database.url).hostname,
        settings.deployer.device_mqtt_host,
    }
    assert hosts <= set(services), hosts - set(services)
    assert settings.database.url.startswith("postgresql+asyncpg://")
    assert settings.api.host == "0.0.0.0" and settings.api.port == 8000
    ports = {str(p) for p in services["api"]["ports"]}
    assert f"{settings.api.port}:{settings.api.port}" in ports
    for path in (settings.model_repository.storage_path, settings.security.encryption_key_path):
        assert str(path).startswith("/var/lib/edgeaiforge/")
    # Every service reads this file.
    env = services["registry"]["environment"]
    assert env["EAF_CONFIG"] == "/app/config/docker.toml"
    assert "COPY config/ config/" in (ROOT / "Dockerfile").read_text()


def test_mosquitto_config_is_the_rendered_template(services: dict[str, dict[str, Any]]) -> None:
    mounted = [v for v in services["mosquitto"]["volumes"] if "mosquitto.conf" in v]
    assert mounted == ["./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"]
    assert (ROOT / "mosquitto" / "mosquitto.conf").read_text() == docker_mosquitto_config()
    init = " ".join(_command(services["mosquitto-init"]))
    assert re.search(r"mosquitto_ctrl dynsec init /mosquitto/data/dynamic-security\.json", init)
    assert "/mosquitto/data/dynamic-security.json" in docker_mosquitto_config()


def test_grafana_is_provisioned_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    volumes = grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    dashboards = grafana["environment"]["EAF_GRAFANA_DASHBOARDS"]
    assert f"./grafana/dashboards:{dashboards}:ro" in volumes
    assert grafana["environment"]["EAF_INFLUXDB_URL"] == "http://influxdb:8086"
    provider = (ROOT / "grafana" / "provisioning" / "dashboards" / "edgeaiforge.yaml").read_text()
    assert "EAF_GRAFANA_DASHBOARDS" in provider
