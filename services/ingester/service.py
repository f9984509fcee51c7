"""The ingester's use cases: MQTT receiver, spool, InfluxDB writer, Prometheus figures.

``Ingester`` is the whole service but its bus subscribers (``handlers``) as one object;
tests run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import start_http_server

from schemas.config import Settings
from schemas.topics import Topics
from services.common.logging import get_logger
from services.ingester.checking import Checker
from services.ingester.domain import Accepted, Reason, Refused, validate_message
from services.ingester.figures import Figures
from services.ingester.influx import InfluxWriter, WriteOutcome
from services.ingester.mqtt import Incoming, MqttReceiver
from services.ingester.store import RejectedMessage, Spool

__all__ = ["Ingester"]

log = get_logger(__name__)

#: Batches written to InfluxDB at once (see ``Ingester._drain``).
_WRITES_IN_FLIGHT = 2
#: Seconds the ingester waits at start for its subscription before it carries on trying.
_READY_WAIT = 10.0


class Ingester:
    """Metrics from devices' MQTT messages into InfluxDB; see docs/metrics.md.

    ``async with Ingester(settings)`` starts it; leaving stops it. Enrolment comes from the
    bus (``handlers.create_router``) or through ``enrol`` (tests and tools).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.ingester
        self.topics = Topics(settings.mqtt.topic_prefix)
        self.figures = Figures()
        self.spool = Spool(
            self.config.spool_path,
            max_points=self.config.max_spool_points,
            max_rejected=self.config.max_rejected,
        )
        self.figures.known_devices.set(self.spool.known_count)
        self.checker = Checker(settings.mqtt.topic_prefix)
        self.receiver = MqttReceiver(settings.mqtt, self.config, self._handle)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._http: Any = None
        self._stopping = False

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Ingester:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._writer_task = asyncio.create_task(self._drain(), name="ingester-writer")
        await asyncio.to_thread(self.checker.start)
        self.receiver.start()
        try:
            subscribed = await self._wait_subscribed()
        except BaseException:
            # Cancelled while waiting (the service is told to stop during its start):
            # ``async with`` does not call ``__aexit__`` for a start that did not finish.
            await self.__aexit__(None, None, None)
            raise
        # Started means subscribed, in the usual case: a broker that is not there yet is
        # waited for a little, then the client keeps trying in the background. The
        # Prometheus endpoint comes up after that, so it answering means the ingester takes
        # metrics (at the very first start, metrics published before the subscription
        # reach no one: the broker has no session for the ingester yet).
        if not subscribed:
            log.warning(
                "not subscribed to the broker yet; still trying",
                broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
                waited_s=_READY_WAIT,
            )
        if self.config.metrics_port:
            self._http, _ = start_http_server(
                self.config.metrics_port,
                addr=self.config.metrics_host,
                registry=self.figures.registry,
            )
        return self

    async def _wait_subscribed(self) -> bool:
        # Polled on the loop, not waited for in a thread: a stop signal cancels this at
        # once, where a thread blocked for _READY_WAIT would hold the process's exit.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_WAIT
        while not self.receiver.connected:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        await asyncio.to_thread(self.receiver.stop)
        await asyncio.to_thread(self.checker.close)
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.spool.close()

    # ---- receiving (worker thread) ------------------------------------------------------

    def _handle(self, messages: list[Incoming]) -> Callable[[], None]:
        checking = self.checker.submit([(m.topic, m.payload) for m in messages])
        return functools.partial(self._spool_run, messages, checking)

    def _spool_run(
        self,
        messages: list[Incoming],
        checking: Callable[[], list[Accepted | Refused]],
    ) -> None:
        accepted: list[tuple[str, ...]] = []
        results = checking()
        for m, result in zip(messages, results, strict=True):
            self.figures.received.inc()
            if isinstance(result, Accepted):
                # The known-device check and the set-aside are one step with ``enrol``
                # and ``remove_device``.
                refused = self.spool.check_or_set_aside(
                    result.device_id, topic=m.topic, payload=m.payload
                )
                if refused is None:
                    accepted.append(result.lines)
                else:
                    why = "device removed" if refused is Reason.DEVICE_REMOVED else "not enrolled"
                    self._count_rejected(refused, m.topic, why)
                continue
            self.spool.set_aside(
                topic=m.topic,
                device_id=result.device_id,
                reason=result.reason.value,
                detail=result.detail,
                payload=m.payload,
            )
            self._count_rejected(result.reason, m.topic, result.detail)
        if accepted:
            n = sum(len(lines) for lines in accepted)
            dropped = self.spool.add_points(accepted)
            if dropped:
                self.figures.dropped.inc(dropped)
                log.warning(
                    "spool full: dropped the oldest points",
                    dropped=dropped,
                    dropped_total=self.spool.dropped,
                    max_spool_points=self.spool.max_points,
                )
            self.figures.accepted.inc(len(accepted))
            self.figures.spooled.inc(n)
            self.figures.spool_points.set(self.spool.count)
            self.notify_writer()

    def _count_rejected(self, reason: Reason, topic: str, detail: str) -> None:
        self.figures.rejected.labels(reason=reason.value).inc()
        log.warning("metrics message set aside", reason=reason.value, topic=topic, detail=detail)

    def notify_writer(self) -> None:
        """Wake the writer (from any thread)."""
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake.set)

    # ---- enrolment ----------------------------------------------------------------------

    def enrol(self, device_id: str, *, enrolled_at: float | None = None) -> int:
        """Accept ``device_id`` from now on; re-admit its messages set aside as unknown.

        ``enrolled_at`` (the event's time, default now) orders it against a removal."""

        def readmit(row: RejectedMessage) -> list[str] | None:
            result = validate_message(
                row.topic, row.payload, topics=self.topics, is_known=lambda _: True
            )
            return list(result.lines) if isinstance(result, Accepted) else None

        readmitted = self.spool.enrol(device_id, readmit, enrolled_at=enrolled_at)
        self.figures.known_devices.set(self.spool.known_count)
        if readmitted:
            self.figures.readmitted.inc(readmitted)
            self.figures.spool_points.set(self.spool.count)
            log.info(
                "device enrolled; set-aside metrics re-admitted",
                device_id=device_id,
                messages=readmitted,
            )
            self.notify_writer()
        return readmitted

    def remove_device(self, device_id: str, *, removed_at: float) -> bool:
        """Refuse ``device_id``'s metrics from now on; those accepted before are kept."""
        refused = self.spool.remove_device(device_id, removed_at=removed_at)
        self.figures.known_devices.set(self.spool.known_count)
        if refused:
            log.info("device removed; its metrics are refused from now on", device_id=device_id)
        return refused

    # ---- writing (event loop) -----------------------------------------------------------

    async def _drain(self) -> None:
        assert self._wake is not None
        batch_size = self.settings.influxdb.batch_size
        async with InfluxWriter(
            self.settings.influxdb,
            retention_days=self.settings.performance_tracking.metrics_retention_period,
            on_retry=lambda _: self.figures.write_retries.inc(),
        ) as writer:
            await writer.ensure_database()
            # Two batches in flight: InfluxDB parses one while the next is read from the
            # spool and sent, and the spool forgets a batch while the next is written.
            # Batches finish in order, so the spool only ever forgets a written prefix.
            in_flight: deque[tuple[int, asyncio.Task[WriteOutcome]]] = deque()
            try:
                while True:
                    while len(in_flight) < _WRITES_IN_FLIGHT:
                        after = in_flight[-1][0] if in_flight else 0
                        rows = await asyncio.to_thread(self.spool.peek, batch_size, after=after)
                        if not rows:
                            break
                        lines = [line for _, message in rows for line in message]
                        in_flight.append((rows[-1][0], asyncio.create_task(writer.write(lines))))
                    if not in_flight:
                        self.figures.lag.set(0)
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._wake.wait(), timeout=self.settings.influxdb.flush_interval
                            )
                        continue
                    self.figures.lag.set(await asyncio.to_thread(self.spool.oldest_age))
                    last_id, task = in_flight[0]
                    outcome = await task
                    in_flight.popleft()
                    if outcome.refused:
                        await asyncio.to_thread(self.spool.add_influx_rejects, outcome.refused)
                        self.figures.influx_rejected.inc(len(outcome.refused))
                        log.error(
                            "influxdb refused points; set aside",
                            count=len(outcome.refused),
                            first_error=outcome.refused[0][1],
                        )
                    await asyncio.to_thread(self.spool.remove, last_id)
                    self.figures.written.inc(outcome.written)
                    self.figures.spool_points.set(self.spool.count)
            finally:
                for _, task in in_flight:
                    task.cancel()
                await asyncio.gather(*(t for _, t in in_flight), return_exceptions=True)
