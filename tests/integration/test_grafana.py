"""Every query of the provisioned Grafana dashboard, with Grafana's macros and variables
substituted as Grafana does, runs against a seeded InfluxDB and returns series."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from schemas.events import DeploymentTargetUpdated, TargetState
from schemas.telemetry import DeviceSample, MetricsBatch
from services.ingester.domain import batch_lines, deployment_line
from tests.support.metrics import batch, recent

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edgeaiforge.json"


def substitute(query: str, variables: dict[str, str]) -> str:
    """Grafana's InfluxQL interpolation: macros, then variables (regex-formatted)."""
    query = query.replace("$timeFilter", "time > now() - 3h")
    query = query.replace("$__interval_ms", "60000").replace("$__interval", "1m")
    for name, value in variables.items():
        query = query.replace(f"${name}", value)
    assert not re.search(r"\$(?!tag_|col)\w", query), f"unsubstituted variable in {query}"
    return query


def all_queries(dashboard: dict) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    queries = [(p["title"], t["query"]) for p in dashboard["panels"] for t in p["targets"]]
    queries += [(f"variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"]]
    return queries


@pytest.fixture(scope="module")
def seeded(influxdb_server) -> tuple[str, str]:
    db = f"grafana_{uuid.uuid4().hex[:8]}"
    model = "detector"
    start = recent(minutes=90)
    lines: list[str] = []
    for d, device in enumerate(("cam-1", "cam-2", "cam-3")):
        for v, version in enumerate(("1.0.0", "1.1.0")):
            lines += batch_lines(
                batch(device, start + timedelta(seconds=v), 60, model=model, version=version,
                      step=timedelta(minutes=1), seed=d * 7 + v)
            )  # fmt: skip
        samples = tuple(
            DeviceSample(ts=start + timedelta(minutes=i), cpu_percent=10.0 + i, memory_bytes=2**20)
            for i in range(60)
        )
        lines += batch_lines(MetricsBatch(batch_id=uuid.uuid4(), device_id=device, device=samples))
        deployment = uuid.uuid4()
        for i, state in enumerate((TargetState.DOWNLOADING, TargetState.ACTIVE)):
            lines.append(
                deployment_line(
                    DeploymentTargetUpdated(
                        deployment_id=deployment,
                        device_id=device,
                        state=state,
                        bytes_received=1000 * (i + 1),
                        occurred_at=start + timedelta(minutes=10 + i),
                    )
                )
            )
    with httpx.Client(base_url=influxdb_server.url) as http:
        http.post("/query", data={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
        r = http.post("/write", params={"db": db, "precision": "ns"}, content="\n".join(lines))
        assert r.status_code == 204, r.text
    return db, model


@pytest.mark.parametrize(
    "variables",
    [
        {"model": ".*", "version": ".*", "device": ".*"},  # "All" everywhere
        {"model": "(detector)", "version": "(1\\.1\\.0)", "device": "(cam\\-1|cam\\-3)"},
    ],
    ids=["all", "selected"],
)
def test_every_panel_and_variable_query_returns_series(influxdb_server, seeded, variables) -> None:
    db, _ = seeded
    dashboard = json.loads(DASHBOARD.read_text())
    queries = all_queries(dashboard)
    assert len(queries) >= 8
    with httpx.Client(base_url=influxdb_server.url, timeout=30) as http:
        for title, raw in queries:
            q = substitute(raw, variables)
            result = http.get("/query", params={"db": db, "q": q}).json()["results"][0]
            assert "error" not in result, (title, q, result)
            series = result.get("series", [])
            assert series, (title, q)
            values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
            assert values, (title, q)


def test_dashboard_has_the_panels_and_variables_users_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("p95 by version", "throughput by device", "error rate", "devices online",
                   "deployment progress"):  # fmt: skip
        assert wanted in titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["model", "version", "device"]
    uid = {p["datasource"]["uid"] for p in dashboard["panels"]}
    # No YAML parser among the dependencies: the provisioning file's two keys by pattern.
    datasource = (GRAFANA / "provisioning/datasources/influxdb.yaml").read_text()
    assert uid == set(re.findall(r"^\s+uid: (\S+)$", datasource, re.M))
    assert re.search(r"^\s+type: influxdb$", datasource, re.M)
