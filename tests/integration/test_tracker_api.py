"""``GET /api/v1/models/{name}/stats``, ``ModelManager.get_model_stats`` and
``edgeaiforge stats``: the tracker's numbers through the REST API, the SDK and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from typer.testing import CliRunner

from edgeaiforge import ModelManager
from edgeaiforge.cli import app as cli
from services.ingester.domain import batch_lines
from services.tracker import create_service
from tests.support.api import create_api_key, serve_in_thread
from tests.support.metrics import batch, recent
from tests.support.settings import platform_settings


@pytest.fixture
def tracker_in_thread(tmp_path, nats_server, influxdb_server, unique_id):
    db = unique_id("db")
    settings = platform_settings(
        tmp_path, nats_url=nats_server.url, influxdb={"url": influxdb_server.url, "database": db}
    )
    stop = threading.Event()
    ready = threading.Event()

    async def main() -> None:
        async with create_service(settings):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "tracker did not start"
    try:
        yield settings
    finally:
        stop.set()
        thread.join(30)


def test_stats_through_rest_sdk_and_cli(tracker_in_thread, influxdb_server, unique_id) -> None:
    settings = tracker_in_thread
    db = settings.influxdb.database
    model = unique_id("model-")
    start = recent(minutes=60)
    seeded = {
        ("1.0.0", "cam-1"): batch("cam-1", start, 20, model=model, version="1.0.0"),
        ("1.0.0", "cam-2"): batch("cam-2", start, 20, model=model, version="1.0.0", seed=3),
        ("2.0.0", "cam-1"): batch(
            "cam-1", start + timedelta(seconds=30), 20, model=model, version="2.0.0", seed=5
        ),
    }
    lines = [line for b in seeded.values() for line in batch_lines(b)]
    with httpx.Client(base_url=influxdb_server.url) as http:
        http.post("/query", data={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
        r = http.post("/write", params={"db": db, "precision": "ns"}, content="\n".join(lines))
        assert r.status_code == 204, r.text
    end = start + timedelta(minutes=5)

    def version_count(version: str) -> int:
        return sum(s.count for (v, _), b in seeded.items() if v == version for s in b.inference)

    with serve_in_thread(settings) as url:
        token = create_api_key(settings, role="viewer")
        with ModelManager(url, token) as mm:
            stats = mm.get_model_stats(model, window=300, end=end)
        assert [v.version for v in stats.versions] == ["1.0.0", "2.0.0"]
        assert [v.count for v in stats.versions] == [version_count("1.0.0"), version_count("2.0.0")]
        assert [d.device_id for d in stats.versions[0].devices] == ["cam-1", "cam-2"]
        one = seeded[("2.0.0", "cam-1")].inference
        p95 = sum(s.latency_p95_ms * s.count for s in one) / sum(s.count for s in one)
        assert stats.versions[1].latency_p95_ms == pytest.approx(p95, rel=1e-9)

        # REST: auth required, bad names refused.
        assert httpx.get(f"{url}/api/v1/models/{model}/stats").status_code == 401
        bad = httpx.get(
            f"{url}/api/v1/models/{model}/stats",
            params={"window": 0},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert bad.status_code == 422

        runner = CliRunner()
        result = runner.invoke(
            cli, ["--url", url, "--token", token, "stats", model, "--window", "86400", "--json"]
        )
        assert result.exit_code == 0, result.output
        assert {v["version"] for v in json.loads(result.output)["versions"]} == {"1.0.0", "2.0.0"}
        table = runner.invoke(
            cli, ["--url", url, "--token", token, "stats", model, "--window", "86400", "--devices"]
        )
        assert table.exit_code == 0, table.output
        assert "1.0.0" in table.output and "cam-2" in table.output and "p95" in table.output
        missing = runner.invoke(
            cli, ["--url", url, "--token", token, "stats", f"{uuid.uuid4().hex}"]
        )
        assert missing.exit_code == 0 and "no inference metrics" in missing.output
