"""``python -m edgeaiforge_stack provision-mqtt | init-keys | health NAME``: one-shot steps
of the docker compose stack."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import aiomqtt

# Not `import nats`: the repository's nats/ directory (server config) would shadow it for
# the import sorter.
from nats.aio.client import Client as NatsClient

from edgeaiforge_stack.health import quiet, service_health
from edgeaiforge_stack.layout import StackError
from schemas.config import Settings
from services.common.keys import KeyFileError, load_kek, load_signing_key
from services.common.mqtt_admin import (
    SERVICE_ROLE,
    DynsecAlreadyExistsError,
    MqttAdmin,
    MqttAdminError,
    provision_platform,
)


async def _provision_with(settings: Settings, admin_user: str, admin_password: str) -> None:
    async with MqttAdmin(
        hostname=settings.mqtt.host,
        port=settings.mqtt.port,
        username=admin_user,
        password=admin_password,
    ) as admin:
        await provision_platform(admin, prefix=settings.mqtt.topic_prefix)
        if settings.mqtt.username and settings.mqtt.password:
            with contextlib.suppress(DynsecAlreadyExistsError):
                await admin.create_client(
                    settings.mqtt.username,
                    settings.mqtt.password.get_secret_value(),
                    roles=[{"rolename": SERVICE_ROLE}],
                )


def _container_health(name: str, settings: Settings) -> bool:
    async def ask() -> bool:
        if name == "api":
            return (await service_health(name, settings, None))[0]
        client = NatsClient()
        password = settings.nats.password.get_secret_value() if settings.nats.password else None
        await asyncio.wait_for(
            client.connect(
                settings.nats.url,
                user=settings.nats.user,
                password=password,
                allow_reconnect=False,
                error_cb=quiet,
                inbox_prefix=f"_INBOX.{settings.nats.user}" if settings.nats.user else "_INBOX",
            ),
            timeout=5,
        )
        try:
            return (await service_health(name, settings, client))[0]
        finally:
            await client.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return False


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeaiforge_stack provision-mqtt | init-keys | health NAME``.

    One-shot steps of the docker compose stack, configured like the services
    (``--config`` and ``EAF_*``): the broker's ACL defaults and services' account (admin
    from ``deployer.admin_*``, account from ``mqtt.username``/``password``); the keys,
    made once before the services start; a service's health check.
    """
    import argparse

    from services.common.config import ConfigError, config_path_from_env, load_settings

    parser = argparse.ArgumentParser(prog="python -m edgeaiforge_stack")
    parser.add_argument("command", choices=("provision-mqtt", "init-keys", "health"))
    parser.add_argument("service", nargs="?", help="for health: the service to ask")
    parser.add_argument("--config", type=Path, default=config_path_from_env())
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "init-keys":
            load_kek(settings.security)
            load_signing_key(settings.security)
        elif args.command == "provision-mqtt":
            admin_password = settings.deployer.admin_password
            if not settings.deployer.admin_username or admin_password is None:
                raise StackError("mosquitto", "set deployer.admin_username and admin_password")
            deadline = time.monotonic() + 60
            while True:
                try:
                    asyncio.run(
                        _provision_with(
                            settings,
                            settings.deployer.admin_username,
                            admin_password.get_secret_value(),
                        )
                    )
                    break
                except (MqttAdminError, aiomqtt.MqttError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        else:
            if not args.service:
                parser.error("health needs the service's name")
            raise SystemExit(0 if _container_health(args.service, settings) else 1)
    except (ConfigError, KeyFileError, StackError, MqttAdminError, aiomqtt.MqttError) as exc:
        print(f"edgeaiforge_stack: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
