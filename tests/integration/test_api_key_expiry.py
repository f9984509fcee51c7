"""API keys expire: the platform's default lifetime, one per key at creation (REST, SDK,
CLI), listed with the keys; an expired key gets 401 with a problem that says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from edgeaiforge import AuthenticationError, ModelManager
from schemas.config import Settings
from services.common.db import create_engine
from services.registry.tables import ApiKeyRow
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, nats_server: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("expiry")
    settings = platform_settings(
        root,
        nats_url=nats_server.url,
        api={"key_lifetime_days": 90, "unexpiring_key_max_age_days": 30},
    )
    with serve_in_thread(settings) as url:
        yield url, settings, create_api_key(settings, role="admin")


def set_times(settings: Settings, key_id: str, **values: datetime | None) -> None:
    """Move a key's times (what waiting days would do)."""

    async def run() -> None:
        engine = create_engine(settings.database)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(**values)
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_lifetimes_default_per_key_and_never(platform) -> None:
    url, _settings, admin = platform
    now = datetime.now(UTC)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as c:
        default = c.post("/api/v1/keys", json={"name": "default", "role": "viewer"}).json()
        week = c.post("/api/v1/keys", json={"name": "w", "role": "viewer", "lifetime_days": 7})
        never = c.post("/api/v1/keys", json={"name": "n", "role": "viewer", "lifetime_days": 0})
        bad = c.post("/api/v1/keys", json={"name": "b", "role": "viewer", "lifetime_days": -1})
        listed = {k["key_id"]: k for k in c.get("/api/v1/keys").json()["items"]}
    assert bad.status_code == 422
    expires = datetime.fromisoformat(default["key"]["expires_at"])
    assert timedelta(days=90) - timedelta(minutes=5) < expires - now < timedelta(days=90, minutes=5)
    expires = datetime.fromisoformat(week.json()["key"]["expires_at"])
    assert timedelta(days=7) - timedelta(minutes=5) < expires - now < timedelta(days=7, minutes=5)
    assert never.json()["key"]["expires_at"] is None
    assert listed[week.json()["key"]["key_id"]]["expires_at"] == week.json()["key"]["expires_at"]
    assert listed[never.json()["key"]["key_id"]]["expires_at"] is None
    # The SDK gives the lifetime too.
    made = ModelManager(url, admin).create_api_key("sdk", "viewer", lifetime_days=3)
    assert made.key.expires_at is not None
    assert timedelta(days=3) - timedelta(minutes=5) < made.key.expires_at - now


def test_an_expired_key_gets_401_saying_it_expired(platform) -> None:
    url, settings, admin = platform
    made = ModelManager(url, admin).create_api_key("soon", "viewer", lifetime_days=1)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {made.token}"}) as c:
        assert c.get("/api/v1/whoami").status_code == 200
        set_times(settings, made.key.key_id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        response = c.get("/api/v1/whoami")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    problem = response.json()
    assert problem["code"] == "api_key_expired"
    assert f"API key {made.key.key_id} expired at" in problem["detail"]
    with pytest.raises(AuthenticationError, match="expired"):
        ModelManager(url, made.token).whoami()


def test_keys_without_expiry_obey_the_configured_max_age(platform) -> None:
    url, settings, admin = platform
    manager = ModelManager(url, admin)
    old = manager.create_api_key("old", "viewer", lifetime_days=0)
    young = manager.create_api_key("young", "viewer", lifetime_days=0)
    set_times(settings, old.key.key_id, created_at=datetime.now(UTC) - timedelta(days=31))
    set_times(settings, young.key.key_id, created_at=datetime.now(UTC) - timedelta(days=29))
    assert ModelManager(url, young.token).whoami().key_id == young.key.key_id
    with pytest.raises(AuthenticationError, match="expired"):
        ModelManager(url, old.token).whoami()


def test_create_key_on_the_registry_host_takes_a_lifetime(platform, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.api import ROOT

    _url, settings, _admin = platform
    config = tmp_path / "c.toml"
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n[api]\nkey_lifetime_days = 10\n'
    )
    base = [sys.executable, "-m", "services.registry"]
    made = subprocess.run(
        [*base, "create-key", "--name", "cli", "--role", "viewer", "--expires-in", "2",
         "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    day = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    assert f"expires: {day}" in made.stderr
    listing = subprocess.run(
        [*base, "list-keys", "--config", str(config)], cwd=ROOT, capture_output=True, text=True
    )
    line = next(x for x in listing.stdout.splitlines() if x.endswith(" cli"))
    assert "active" in line and day in line
