"""The tracker's data: InfluxQL reads of ``inference`` and the published-regressions table."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import DateTime, String, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.config import InfluxDBConfig
from schemas.telemetry import timestamp_ns
from services.common.migrate import upgrade
from services.tracker.domain import Interval, Sums
from services.tracker.errors import InfluxTruncated, InfluxUnavailable

__all__ = [
    "InfluxReader",
    "PublishedRegression",
    "RegressionStore",
    "TrackerBase",
    "influxql_string",
]


def influxql_string(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_INNER = (
    'SELECT "count" AS c, "errors" AS e, "latency_p50_ms" * "count" AS w50, '
    '"latency_p95_ms" * "count" AS w95, "latency_p99_ms" * "count" AS w99, '
    '"latency_max_ms" AS mx FROM "inference"'
)
_OUTER = 'SELECT sum("c"), sum("e"), sum("w50"), sum("w95"), sum("w99"), max("mx")'
_GROUP = 'GROUP BY "version", "device"'


class InfluxReader:
    """InfluxQL queries over the v1 ``/query`` endpoint; use as ``async with``."""

    def __init__(self, config: InfluxDBConfig) -> None:
        self.config = config
        headers: dict[str, str] = {}
        auth: httpx.Auth | None = None
        if config.token is not None:
            headers["Authorization"] = f"Token {config.token.get_secret_value()}"
        elif config.username:
            password = config.password.get_secret_value() if config.password else ""
            auth = httpx.BasicAuth(config.username, password)
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"), headers=headers, auth=auth, timeout=30.0
        )

    async def __aenter__(self) -> InfluxReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def query(self, q: str) -> list[dict[str, object]]:
        """The series of one statement; a missing database reads as no data."""
        try:
            r = await self._client.get(
                "/query", params={"db": self.config.database, "q": q, "epoch": "ns"}
            )
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 500 or r.status_code in (401, 403):
            raise InfluxUnavailable(f"HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        result = (body.get("results") or [{}])[0]
        error = result.get("error") or body.get("error")
        if error:
            if "database not found" in str(error):
                return []
            raise InfluxUnavailable(str(error))
        return list(result.get("series", []))

    @staticmethod
    def _where(model: str, start: datetime, end: datetime, version: str | None) -> str:
        where = (
            f'"model" = {influxql_string(model)} AND time >= {timestamp_ns(start)} '
            f"AND time < {timestamp_ns(end)}"
        )
        if version is not None:
            where += f' AND "version" = {influxql_string(version)}'
        return where

    async def sums(
        self, model: str, start: datetime, end: datetime, version: str | None = None
    ) -> list[Sums]:
        """Per (version, device): sums of count, errors and count-weighted percentiles."""
        where = self._where(model, start, end, version)
        # Values are quoted by influxql_string and times are integers: no injection.
        span = f"time >= {timestamp_ns(start)} AND time < {timestamp_ns(end)}"
        q = f"{_OUTER} FROM ({_INNER} WHERE {where}) WHERE {span} {_GROUP}"
        rows = []
        for series in await self.query(q):
            tags = series.get("tags") or {}
            values = series["values"][0]  # type: ignore[index]
            assert isinstance(tags, dict)
            _, c, e, w50, w95, w99, mx = values
            rows.append(
                Sums(
                    version=str(tags["version"]),
                    device=str(tags["device"]),
                    count=int(c or 0),
                    errors=int(e or 0),
                    w50=float(w50 or 0.0),
                    w95=float(w95 or 0.0),
                    w99=float(w99 or 0.0),
                    max_ms=float(mx or 0.0),
                )
            )
        return rows

    async def intervals(self, model: str, start: datetime, end: datetime) -> list[Interval]:
        """Every ``inference`` point of ``model`` in the window: count, errors and p95."""
        where = self._where(model, start, end, None)
        q = (
            'SELECT "count", "errors", "latency_p95_ms" FROM "inference" '  # noqa: S608
            f'WHERE {where} GROUP BY "version", "device"'
        )
        out = []
        for series in await self.query(q):
            if series.get("partial"):
                raise InfluxTruncated
            tags = series.get("tags") or {}
            assert isinstance(tags, dict)
            version, device = str(tags["version"]), str(tags["device"])
            for _, c, e, p95 in series["values"]:  # type: ignore[attr-defined]
                out.append(
                    Interval(
                        version=version,
                        device=device,
                        count=int(c or 0),
                        errors=int(e or 0),
                        p95_ms=float(p95 or 0.0),
                    )
                )
        return out

    async def first_seen(self, model: str, start: datetime, end: datetime) -> dict[str, datetime]:
        """Each version's first point in the window."""
        where = self._where(model, start, end, None)
        q = f'SELECT first("count") FROM "inference" WHERE {where} GROUP BY "version"'  # noqa: S608
        out = {}
        for series in await self.query(q):
            tags = series.get("tags") or {}
            assert isinstance(tags, dict)
            ns = int(series["values"][0][0])  # type: ignore[index]
            out[str(tags["version"])] = datetime.fromtimestamp(ns / 1e9, UTC)
        return out

    async def models(self) -> list[str]:
        """Models with points in the database."""
        series = await self.query('SHOW TAG VALUES FROM "inference" WITH KEY = "model"')
        return sorted(str(v[1]) for s in series for v in s["values"])  # type: ignore[attr-defined]


class TrackerBase(DeclarativeBase):
    pass


class PublishedRegression(TrackerBase):
    """One row per regression already announced: it is announced once."""

    __tablename__ = "tracker_regressions"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    baseline_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


class RegressionStore:
    """Which regressions were already published (shared by all tracker instances)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_tables(self) -> None:
        await upgrade(self.engine, "services.tracker")

    async def seen(self, model: str, version: str, baseline: str, metric: str) -> bool:
        async with self.engine.connect() as conn:
            row = await conn.scalar(
                select(PublishedRegression.metric).where(
                    PublishedRegression.model == model,
                    PublishedRegression.version == version,
                    PublishedRegression.baseline_version == baseline,
                    PublishedRegression.metric == metric,
                )
            )
        return row is not None

    async def mark(self, model: str, version: str, baseline: str, metric: str) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(PublishedRegression).values(
                        model=model, version=version, baseline_version=baseline, metric=metric
                    )
                )
        except IntegrityError:
            pass  # another instance marked it first
