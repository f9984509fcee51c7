"""Inference metrics on the device: latency histograms, interval batches, publishing.

- ``LatencyHistogram`` keeps every inference's latency in log-spaced buckets (relative
  error of a percentile at most ``(growth - 1) / 2``, 1 % by default) and the exact maximum.
- ``MetricsCollector`` holds one histogram per (model, version); ``record`` is called for
  every inference, ``collect`` closes the interval and returns a ``MetricsBatch`` with
  count, errors, p50/p95/p99/max latency and throughput per model version, and the
  device's CPU and memory.
- ``MetricsReporter`` puts each batch into the on-disk ``MetricsSpool`` first and sends
  the spool, oldest first, whenever a client is connected; a batch leaves the spool only
  when the broker has acknowledged it (QoS 1). It works with any connected
  ``aiomqtt.Client``: the runtime calls ``tick`` each interval and ``flush(client)`` while
  connected, or runs ``run(connect)``, which has its own reconnect loop.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiomqtt
import psutil

from edge_runtime.spool import MetricsSpool
from schemas.telemetry import (
    MAX_METRICS_PAYLOAD_BYTES,
    MAX_SAMPLES_PER_BATCH,
    DeviceSample,
    InferenceSample,
    MetricsBatch,
)
from schemas.topics import Topics

__all__ = ["LatencyHistogram", "MetricsCollector", "MetricsReporter"]


class LatencyHistogram:
    """Latencies in log-spaced buckets from ``min_ms`` up; exact count, errors and max."""

    def __init__(self, *, min_ms: float = 0.01, growth: float = 1.02) -> None:
        if min_ms <= 0 or growth <= 1:
            raise ValueError("min_ms must be > 0 and growth > 1")
        self.min_ms = min_ms
        self.growth = growth
        self._log_growth = math.log(growth)
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.errors = 0
        self.max_ms = 0.0

    def record(self, latency_ms: float, *, ok: bool = True) -> None:
        """Add one inference (a failed one counts in ``errors`` and in the latencies)."""
        if not math.isfinite(latency_ms) or latency_ms < 0:
            latency_ms = 0.0
        index = self._index(latency_ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        if not ok:
            self.errors += 1
        self.max_ms = max(self.max_ms, latency_ms)

    def _index(self, latency_ms: float) -> int:
        if latency_ms <= self.min_ms:
            return 0
        return 1 + int(math.log(latency_ms / self.min_ms) / self._log_growth)

    def _value(self, index: int) -> float:
        if index == 0:
            return self.min_ms
        # The bucket's geometric midpoint: at most (growth - 1) / 2 away from any value in it.
        low = self.min_ms * self.growth ** (index - 1)
        return low * math.sqrt(self.growth)

    def percentile(self, q: float) -> float:
        """The ``q``-quantile (0 < q <= 1) by the nearest-rank method; 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self._value(index), self.max_ms)
        return self.max_ms  # pragma: no cover - rank <= count


@dataclass
class _Series:
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_ts: datetime | None = None


class MetricsCollector:
    """One histogram per (model, version); ``collect`` closes an interval. Thread-safe."""

    def __init__(
        self,
        device_id: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sample_device: bool = True,
    ) -> None:
        self.device_id = device_id
        self._clock = clock
        self._sample_device = sample_device
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self._interval_start = time.monotonic()
        self._last_ts: datetime | None = None

    def record(self, model: str, version: str, latency_ms: float, *, ok: bool = True) -> None:
        """Add one inference of ``model`` ``version``."""
        with self._lock:
            series = self._series.get((model, version))
            if series is None:
                series = self._series[(model, version)] = _Series()
            series.histogram.record(latency_ms, ok=ok)

    def collect(self, *, spool_dropped: int = 0) -> MetricsBatch | None:
        """Close the interval: one sample per model version that ran, and the device's own.

        Timestamps strictly increase from one batch to the next (even if the wall clock
        steps back), so no two samples of a series ever share an InfluxDB point.
        """
        now_mono = time.monotonic()
        with self._lock:
            elapsed = max(now_mono - self._interval_start, 1e-6)
            self._interval_start = now_mono
            current = {k: s for k, s in self._series.items() if s.histogram.count}
            self._series = {k: _Series() for k in self._series if k in current}
            ts = self._clock()
            if self._last_ts is not None and ts <= self._last_ts:
                ts = self._last_ts + timedelta(microseconds=1)
            self._last_ts = ts
        inference = tuple(
            InferenceSample(
                ts=ts,
                model=model,
                version=version,
                count=s.histogram.count,
                errors=s.histogram.errors,
                latency_p50_ms=s.histogram.percentile(0.50),
                latency_p95_ms=s.histogram.percentile(0.95),
                latency_p99_ms=s.histogram.percentile(0.99),
                latency_max_ms=s.histogram.max_ms,
                throughput=s.histogram.count / elapsed,
            )
            for (model, version), s in sorted(current.items())
        )[:MAX_SAMPLES_PER_BATCH]
        device: tuple[DeviceSample, ...] = ()
        if self._sample_device:
            device = (
                DeviceSample(
                    ts=ts,
                    cpu_percent=psutil.cpu_percent(interval=None),
                    memory_bytes=psutil.virtual_memory().used,
                ),
            )
        if not inference and not device:
            return None
        return MetricsBatch(
            batch_id=uuid.uuid4(),
            device_id=self.device_id,
            inference=inference,
            device=device,
            spool_dropped=spool_dropped,
        )


def _reraise_swallowed_cancellation() -> None:
    """End a task whose cancellation a publish returned through.

    In Python 3.11 ``asyncio.wait_for``, which aiomqtt's publish waits in, returns its
    result instead of raising when the PUBACK and a cancellation arrive together; the
    request stays counted (``Task.cancelling``), so it is raised here, or a reporter loop
    would go on and ``await task`` after ``task.cancel()`` would wait forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class MetricsReporter:
    """Collect each interval into the spool; send the spool whenever connected."""

    def __init__(
        self,
        collector: MetricsCollector,
        spool: MetricsSpool,
        *,
        topics: Topics | None = None,
        interval: float = 10.0,
    ) -> None:
        self.collector = collector
        self.spool = spool
        self.topic = (topics or Topics()).metrics(collector.device_id)
        self.interval = interval
        self._pending = asyncio.Event()

    def tick(self) -> MetricsBatch | None:
        """Close the interval and spool its batch (whether or not the broker is reachable)."""
        batch = self.collector.collect(spool_dropped=self.spool.dropped)
        if batch is None:
            return None
        payload = batch.model_dump_json().encode()
        if len(payload) <= MAX_METRICS_PAYLOAD_BYTES:
            self.spool.put(payload)
        return batch

    async def flush_via(
        self, publish: Callable[[bytes], Awaitable[bool]], *, limit: int = 100
    ) -> int:
        """Send spooled batches, oldest first, through ``publish``; returns how many went.

        ``publish(payload)`` returns True once the broker has the batch (QoS 1 acked) and
        False when the device is offline, e.g. ``EdgeRuntime.publish_metrics``. A batch
        leaves the spool only after True; on False the rest wait for the next flush.
        """
        sent = 0
        while True:
            batches = await asyncio.to_thread(self.spool.peek, limit)
            if not batches:
                return sent
            for batch_id, payload in batches:
                if not await publish(payload):
                    return sent
                await asyncio.to_thread(self.spool.remove, batch_id)
                sent += 1
                _reraise_swallowed_cancellation()

    async def flush(self, client: aiomqtt.Client, *, limit: int = 100) -> int:
        """Send spooled batches through a connected ``aiomqtt.Client``.

        Raises ``aiomqtt.MqttError`` when the connection fails; what was not acknowledged
        stays in the spool.
        """

        async def publish(payload: bytes) -> bool:
            # aiomqtt returns once the broker's PUBACK arrived (QoS 1).
            await client.publish(self.topic, payload, qos=1)
            return True

        return await self.flush_via(publish, limit=limit)

    async def run_with(self, publish: Callable[[bytes], Awaitable[bool]]) -> None:
        """Tick every ``interval`` and flush through ``publish``; runs until cancelled.

        The hook for a runtime that owns the MQTT connection:
        ``reporter.run_with(runtime.publish_metrics)``.
        """
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.tick)
            await self.flush_via(publish)

    async def run(
        self,
        connect: Callable[[], AbstractAsyncContextManager[aiomqtt.Client]],
        *,
        max_backoff: float = 30.0,
    ) -> None:
        """Tick every ``interval`` and keep the spool flowing, reconnecting on failure.

        ``connect()`` returns a fresh, not yet entered ``aiomqtt.Client`` (or any async
        context manager yielding a connected one). Runs until cancelled.
        """
        ticker = asyncio.create_task(self._tick_forever())
        backoff = 1.0
        try:
            while True:
                try:
                    async with connect() as client:
                        backoff = 1.0
                        while True:
                            self._pending.clear()
                            await self.flush(client)
                            await self._pending.wait()
                except aiomqtt.MqttError:
                    await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311
                    backoff = min(backoff * 2, max_backoff)
        finally:
            ticker.cancel()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if await asyncio.to_thread(self.tick) is not None:
                self._pending.set()
