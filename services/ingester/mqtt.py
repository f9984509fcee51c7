"""The MQTT side of the ingester: paho-mqtt with manual acks in two threads.

paho's network thread only queues incoming messages. A worker thread takes them in order,
in runs: it has a run validated (while the previous run is committed), commits the accepted
points of the run in one transaction, sets the refused ones aside, and only then
acknowledges them (in the order they came, as MQTT asks). The broker stops sending once
``receive_maximum`` messages wait unacknowledged, so the queue is bounded; a full spool
drops its oldest points (counted), so acks never stall.

A message that arrived on an earlier connection is dropped unacknowledged: after a
reconnect the broker redelivers it within the resumed session, and an ack sent on the new
connection for the old packet id could acknowledge a different message.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas.config import IngesterConfig, MqttConfig
from schemas.topics import Topics
from services.common.logging import get_logger

__all__ = ["Incoming", "MqttReceiver"]

log = get_logger(__name__)

#: Messages handled (and committed) together at most.
_RUN = 200
#: Runs started before the oldest is committed (see ``MqttReceiver._work``).
_DEPTH = 2
#: The queue was empty.
_NOTHING: Any = object()


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


#: Starts work on a run of messages; the function it returns makes them durable.
Handler = Callable[[list[Incoming]], Callable[[], None]]


class MqttReceiver:
    """Subscribe to ``$share/<group>/<prefix>/devices/+/metrics`` and feed ``handle``.

    ``handle`` gets a run of messages, starts work on it and returns a function that,
    when it returns, has made each message durable (spooled or set aside); the messages
    are acknowledged after that. The next run may be handed over before that function
    is called; the functions are called in the order of the runs.
    """

    def __init__(self, mqtt: MqttConfig, config: IngesterConfig, handle: Handler) -> None:
        self.mqtt = mqtt
        self.config = config
        self._handle = handle
        self._queue: queue.Queue[Incoming | None] = queue.Queue()
        self._generation = 0
        self._connected = threading.Event()
        self._stopping = threading.Event()
        every_metrics = Topics(mqtt.topic_prefix).all_devices("metrics")
        self.filter = f"$share/{config.shared_group}/{every_metrics}"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if mqtt.username:
            password = mqtt.password.get_secret_value() if mqtt.password else None
            client.username_pw_set(mqtt.username, password)
        if mqtt.tls:
            client.tls_set(ca_certs=str(mqtt.ca_file) if mqtt.ca_file else None)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._worker = threading.Thread(target=self._work, name="ingester-worker", daemon=True)

    @property
    def connected(self) -> bool:
        """Connected with the subscription in place (the broker acknowledged it)."""
        return self._connected.is_set()

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry
        props.ReceiveMaximum = self.config.receive_maximum
        self._client.connect_async(
            self.mqtt.host,
            self.mqtt.port,
            keepalive=self.mqtt.keepalive,
            clean_start=False,
            properties=props,
        )
        self._worker.start()
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect (the session stays on the broker) and finish the worker."""
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ---- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(self, client: paho.Client, _: Any, flags: Any, reason: Any, __: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the ingester", reason=str(reason))
            return
        self._generation += 1
        # Subscribing again on a resumed session is harmless and covers a lost session.
        # Until the broker acknowledges it, metrics published meanwhile reach no one.
        client.subscribe(self.filter, qos=1)
        log.info(
            "connected to the broker",
            session_present=bool(getattr(flags, "session_present", False)),
            filter=self.filter,
        )

    def _on_subscribe(self, _: paho.Client, __: Any, ___: int, reasons: Any, ____: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused the subscription", filter=self.filter, reasons=failed)
            return
        self._connected.set()

    def _on_disconnect(self, _: paho.Client, __: Any, ___: Any, reason: Any, ____: Any) -> None:
        self._connected.clear()
        self._generation += 1
        if not self._stopping.is_set():
            log.warning("disconnected from the broker; reconnecting", reason=str(reason))

    def _on_message(self, _: paho.Client, __: Any, message: paho.MQTTMessage) -> None:
        self._queue.put(
            Incoming(
                message.topic, bytes(message.payload), message.mid, message.qos, self._generation
            )
        )

    # ---- worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        # Up to _DEPTH runs are started at once: the next run is being checked while
        # the previous one is committed and acknowledged. Runs finish in order.
        pending: deque[tuple[list[Incoming], Callable[[], None]]] = deque()
        while True:
            try:
                first = self._queue.get(block=not pending)
            except queue.Empty:
                first = _NOTHING
            if first is None:
                return
            if first is not _NOTHING:
                current = [m for m in self._take_run(first) if m.generation == self._generation]
                if current:
                    pending.append((current, self._handle(current)))
                if len(pending) < _DEPTH and not self._queue.empty():
                    continue
            if not pending:
                continue
            run, finish = pending.popleft()
            while True:
                try:
                    finish()
                    break
                except Exception:
                    # The spool could not commit (disk full, I/O error): do not ack, retry.
                    log.exception("could not spool messages; retrying")
                    if self._stopping.is_set():
                        return
                    time.sleep(1.0)
            for m in run:
                if m.generation == self._generation and m.qos > 0:
                    self._client.ack(m.mid, m.qos)

    def _take_run(self, first: Incoming) -> list[Incoming]:
        run = [first]
        while len(run) < _RUN:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            run.append(item)
        return run
