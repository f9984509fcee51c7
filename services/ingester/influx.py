"""Writing line protocol to InfluxDB's v1 ``/write`` endpoint, and creating the database.

``write`` never gives up on what is not the points' fault: 429, 5xx, lost connections,
and authentication or missing-database answers (a configuration or server problem, not a
bad point) are retried without limit, with jittered exponential back-off. A 400/413/422
means InfluxDB refused something in the batch; InfluxDB 1.x still stores the good points of
a partial write, so the batch is split in halves and written again (rewriting a point is
harmless: same series, same timestamp) until the refused points stand alone; those are
returned to be set aside.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from schemas.config import InfluxDBConfig
from services.common.logging import get_logger

__all__ = ["InfluxWriter", "WriteOutcome", "influx_auth", "quote_ident"]

log = get_logger(__name__)

RETENTION_POLICY = "eaf"
_SPLIT_STATUSES = frozenset({400, 413, 422})


class _Transient(Exception):
    """A write that should simply be tried again."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class WriteOutcome:
    written: int = 0
    #: Points InfluxDB refused, as (line, InfluxDB's error).
    refused: list[tuple[str, str]] = field(default_factory=list)


def influx_auth(config: InfluxDBConfig) -> tuple[dict[str, str], httpx.Auth | None]:
    """Headers and auth for ``config``: a token header, or basic auth from user/password."""
    if config.token is not None:
        return {"Authorization": f"Token {config.token.get_secret_value()}"}, None
    if config.username:
        password = config.password.get_secret_value() if config.password else ""
        return {}, httpx.BasicAuth(config.username, password)
    return {}, None


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxWriter:
    """An HTTP client for one InfluxDB database; use as ``async with``."""

    def __init__(
        self,
        config: InfluxDBConfig,
        *,
        retention_days: int,
        on_retry: Callable[[str], None] | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.config = config
        self.retention_days = retention_days
        self._on_retry = on_retry
        self._max_backoff = max_backoff
        headers, auth = influx_auth(config)
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        self._database_ready = False

    async def __aenter__(self) -> InfluxWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def _retrying(
        self, what: str, attempt: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        def before_sleep(state: object) -> None:
            outcome = getattr(state, "outcome", None)
            exc = outcome.exception() if outcome is not None else None
            reason = exc.reason if isinstance(exc, _Transient) else repr(exc)
            log.warning("influxdb not reachable; retrying", what=what, reason=reason)
            if self._on_retry is not None:
                self._on_retry(reason)

        async for tries in AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._max_backoff, jitter=0.5),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with tries:
                return await attempt()
        raise AssertionError("unreachable: stop_never never stops")  # pragma: no cover

    async def _send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code in (401, 403):
            raise _Transient(
                f"HTTP {response.status_code}: check influxdb.token or username/password"
            )
        return response

    async def _post_query(self, statement: str) -> httpx.Response:
        return await self._send("POST", "/query", data={"q": statement})

    async def ensure_database(self) -> None:
        """Create the database and make ``eaf`` (retention days from config) its default."""
        db = quote_ident(self.config.database)
        rp = quote_ident(RETENTION_POLICY)
        days = f"{self.retention_days}d"
        statements = (
            f"CREATE DATABASE {db}",
            f"CREATE RETENTION POLICY {rp} ON {db} DURATION {days} REPLICATION 1 DEFAULT",
        )
        for statement in statements:
            response = await self._retrying(
                "create database", functools.partial(self._post_query, statement)
            )
            error = _query_error(response)
            if error and "already exists" in error:
                response = await self._retrying(
                    "alter retention policy",
                    lambda: self._send(
                        "POST",
                        "/query",
                        data={"q": f"ALTER RETENTION POLICY {rp} ON {db} DURATION {days} DEFAULT"},
                    ),
                )
                error = _query_error(response)
            if error:
                # InfluxDB 2.x/3.x manage databases (buckets) themselves: say so, go on.
                log.warning("could not set up the database", statement=statement, error=error)
        self._database_ready = True

    async def write(self, lines: Sequence[str]) -> WriteOutcome:
        """Write ``lines``; retries until InfluxDB answers about the points themselves."""
        outcome = WriteOutcome()
        await self._write(list(lines), outcome)
        return outcome

    async def _write(self, lines: list[str], outcome: WriteOutcome) -> None:
        if not lines:
            return
        while True:
            if not self._database_ready:
                await self.ensure_database()
            response = await self._retrying(
                "write",
                lambda: self._send(
                    "POST",
                    "/write",
                    params={"db": self.config.database, "precision": "ns"},
                    content="\n".join(lines).encode(),
                ),
            )
            if response.is_success:
                outcome.written += len(lines)
                return
            if response.status_code == 404:
                # The database went away (dropped, or a fresh server): create it again.
                log.warning("database not found; creating it", database=self.config.database)
                self._database_ready = False
                continue
            if response.status_code in _SPLIT_STATUSES:
                break
            # Any other 4xx is about the request as a whole, not the points: keep trying.
            log.error(
                "influxdb refused the write; retrying",
                status=response.status_code,
                body=response.text[:300],
            )
            if self._on_retry is not None:
                self._on_retry(f"HTTP {response.status_code}")
            await asyncio.sleep(self._max_backoff)
        if len(lines) == 1:
            outcome.refused.append((lines[0], _error_text(response)))
            return
        half = len(lines) // 2
        await self._write(lines[:half], outcome)
        await self._write(lines[half:], outcome)

    async def query(self, q: str) -> httpx.Response:
        """Run an InfluxQL query against the database (no retries)."""
        return await self._client.get("/query", params={"db": self.config.database, "q": q})


def _query_error(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None if response.is_success else response.text[:300]
    if isinstance(body, dict):
        if "error" in body:
            return str(body["error"])
        for result in body.get("results", []):
            if isinstance(result, dict) and "error" in result:
                return str(result["error"])
    return None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {response.text[:300]}"
