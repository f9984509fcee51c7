"""The device agent: one ``EdgeRuntime`` per device, bound to its state directory.

``run()`` keeps a connection to the broker with jittered back-off (``_session``),
follows the retained ``desired`` manifest and pulls chunks with a window of outstanding
requests (``_deployment``), activates the new model atomically while inference
continues (``_activation``), and reports every state change on the retained ``state``
topic (``_reporting``); inference metrics go through an on-disk spool to the
``metrics`` topic. See ``docs/device-protocol.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edge_runtime._model import InferenceRecorder, ModelHost
from edge_runtime._session import BrokerSession
from edge_runtime._state import Connection, ConnectionState, StateDir
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.metrics import MetricsCollector, MetricsReporter
from edge_runtime.spool import MetricsSpool
from schemas.topics import Topics
from schemas.transfer import ActiveModel

__all__ = ["EdgeRuntime"]


def _chain(first: InferenceRecorder | None, second: Callable[..., None]) -> InferenceRecorder:
    """One recorder that calls both (the caller's own and the metrics collector)."""

    def record(*, model: str, version: str, latency_ms: float, ok: bool) -> None:
        if first is not None:
            first(model=model, version=version, latency_ms=latency_ms, ok=ok)
        second(model, version, latency_ms, ok=ok)

    return record


class EdgeRuntime(BrokerSession):
    """One device's runtime, bound to an enrolled state directory.

    One object; its behaviour is written in parts, one module each, that build on one
    another: ``Reporting`` < ``Activation`` < ``Deployments`` < ``BrokerSession``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        window_size: int | None = None,
        stall_timeout: float | None = None,
        threads: int = 1,
        prepack_weights: bool = False,
        recorder: InferenceRecorder | None = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        reconnect_refused: float = 60.0,
        metrics_interval: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``metrics_interval`` (seconds) turns on inference metrics: each interval a batch
        goes to the on-disk spool (``metrics.db`` in the state dir) and from there to the
        device's ``metrics`` topic whenever the broker is reachable.
        ``prepack_weights`` trades memory for speed: see ``ModelHost``.
        ``reconnect_min``/``reconnect_max`` bound the back-off after a network error;
        while the broker refuses the credentials, attempts start ``reconnect_refused``
        seconds apart (doubling to 10 minutes) and a new enrolment is tried at once."""
        self.state = StateDir(state_dir)
        self._enrolled_stamp = self._enrolment_stamp()
        self.config = self.state.enrollment()
        self.device_id = self.config.device_id
        self.topics = Topics(self.config.mqtt.topic_prefix)
        self._mqtt_override = (mqtt_host, mqtt_port)
        self.mqtt_host = mqtt_host or self.config.mqtt.host
        self.mqtt_port = mqtt_port or self.config.mqtt.port
        self.window_size = window_size or self.config.window_size
        self.stall_timeout = stall_timeout or self.config.stall_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.reconnect_refused = reconnect_refused
        self.connection = Connection(ConnectionState.CONNECTING, int(time.time()), pid=os.getpid())
        self._leaving = False
        self.metrics = None
        if metrics_interval:
            collector = MetricsCollector(self.device_id)
            self.metrics = MetricsReporter(
                collector,
                MetricsSpool(Path(state_dir) / "metrics.db"),
                topics=self.topics,
                interval=metrics_interval,
            )
            recorder = _chain(recorder, collector.record)
        self.host = ModelHost(threads=threads, recorder=recorder, prepack=prepack_weights)
        self._log = log or (lambda _msg: None)
        self._platform_key = self.state.platform_key()
        self._private_key = self.state.private_key()
        self._client = None
        self._job = None
        self._finishing = None
        self._wake = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._transition_wake = asyncio.Event()
        self._progress_built = 0.0
        self._reports = []
        self._progress = None
        self._rejection = None
        self._broadcast_topic = None
        self._connected = asyncio.Event()
        self._established = False
        self._latest = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Condition()
        self._waiters = 0
        self.stats = {
            "chunks_requested": 0,
            "chunks_received": 0,
            "chunks_refused": 0,
            "duplicates": 0,
            "connections": 0,
            "refused": 0,
        }

    # ---- public API ------------------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self.host.active

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def infer(self, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the active model (on sample inputs when ``inputs`` is None)."""
        return await self.host.infer(inputs)

    async def simulate(self, rate: float) -> None:
        """Run ``rate`` inferences a second on generated inputs until cancelled (demos,
        benchmarks: ``--simulate RATE``); nothing runs until a model is active."""
        interval = 1.0 / rate
        next_at = time.monotonic()
        while True:
            next_at += interval
            with contextlib.suppress(EdgeRuntimeError):
                await self.infer()
            delay = next_at - time.monotonic()
            if delay < -1.0:  # fell behind (a slow model): do not catch up in a burst
                next_at = time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_for(self, predicate: Callable[[EdgeRuntime], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds after some state change."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        finally:
            self._waiters -= 1

    @property
    def stopping(self) -> bool:
        """``stop()`` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """End ``run()``: it says goodbye and returns within about a second."""
        self._stop.set()
