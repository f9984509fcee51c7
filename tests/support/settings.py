"""The one builder of platform settings for the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeaiforge_stack.servers import MosquittoServer, free_port
from schemas.config import Settings

__all__ = ["platform_settings"]


def platform_settings(
    root: Path,
    *,
    nats_url: str = "nats://127.0.0.1:1",
    database_url: str | None = None,
    database_file: str = "registry.db",
    port: int | None = None,
    broker: MosquittoServer | None = None,
    mqtt_user: tuple[str, str] | None = None,
    **sections: dict[str, Any],
) -> Settings:
    """Settings with everything under ``root``: store, keys, database; a free API port.

    The default ``nats_url`` is for code without a bus. With ``broker`` (the test
    Mosquitto) the services use it with the account ``mqtt_user`` (username, password) and
    the deployer is its admin. ``sections`` override or extend sections, e.g.
    ``model_repository={"max_versions_per_model": 2}``.
    """
    data: dict[str, dict[str, Any]] = {
        "model_repository": {"storage_path": root / "models", "cache_path": root / "cache"},
        "security": {
            "encryption_key_path": root / "keys" / "kek.key",
            "signing_key_path": root / "keys" / "signing.pem",
            "signing_chain_path": root / "keys" / "signing-chain.json",
            "dev_mode": True,
        },
        "nats": {"url": nats_url, "request_timeout": 5.0},
        "database": {"url": database_url or f"sqlite+aiosqlite:///{root / database_file}"},
        "api": {"host": "127.0.0.1", "port": port or free_port()},
    }
    if broker is not None:
        data["mqtt"] = {"host": broker.host, "port": broker.port}
        data["deployer"] = {
            "admin_username": broker.admin_username,
            "admin_password": broker.admin_password,
        }
    if mqtt_user is not None:
        data.setdefault("mqtt", {}).update(username=mqtt_user[0], password=mqtt_user[1])
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings.model_validate(data)
