"""The connection to the broker: the reconnect loop, one MQTT session, the goodbye.

``run()`` keeps a session open with jittered back-off (a refused device backs off
further and watches its state directory for a new enrolment); a session subscribes,
says ``online`` = 1 and runs the receiver, the chunk driver and the state reporter
until one of them ends. State that must survive lives on disk, not in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Iterable
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime._deployment import Deployments
from edge_runtime._state import Connection, ConnectionState
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.metrics import MetricsReporter
from schemas.deployer import EnrollReply

__all__ = ["NOT_AUTHORIZED", "BrokerSession"]

_NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
#: Seconds a cancelled task may run on before it is cancelled again (see _cancel_and_wait):
#: the driver and the reporter have nothing to clean up. A session is given a moment for
#: its graceful disconnect; cut short, the broker sends the will (``online`` = 0), which
#: says the same as the goodbye: a stop must not wait for a broker that does not answer.
_CANCEL_AGAIN = 0.1
_SESSION_CANCEL_AGAIN = 0.5
#: Seconds a stop waits for the broker to take the goodbye (``online`` = 0).
_GOODBYE_TIMEOUT = 0.5
#: The longest pause between attempts while the broker refuses the credentials.
_REFUSED_MAX = 600.0
#: How often a refused device looks for a new enrolment in its state directory.
_ENROLMENT_POLL = 1.0
#: Logged once when the broker starts refusing the device's credentials.
NOT_AUTHORIZED = (
    "not authorized: this device was removed or its credentials revoked; enrol it again"
)


async def _cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, again_after: float = _CANCEL_AGAIN
) -> None:
    """Cancel ``tasks`` and return when every one has ended; their outcomes stay in them.

    A task still running after a cancellation is cancelled again: in Python 3.11
    ``asyncio.wait_for``, which aiomqtt's publish, subscribe and disconnect wait in, returns
    its result instead of raising when the result arrives together with the cancellation
    (a PUBACK read in the same pass of the event loop), so a loop around such a call goes on
    as if it had never been cancelled, and a plain ``await task`` waits for it forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)


class BrokerSession(Deployments):
    """The part of ``EdgeRuntime`` that stays connected to the broker."""

    config: EnrollReply
    mqtt_host: str
    mqtt_port: int
    reconnect_min: float
    reconnect_max: float
    reconnect_refused: float
    #: The link to the broker; also written to ``status.json`` on every change.
    connection: Connection
    metrics: MetricsReporter | None
    _mqtt_override: tuple[str | None, int | None]
    _enrolled_stamp: int
    _connected: asyncio.Event
    _established: bool
    _stop: asyncio.Event

    async def run(self) -> None:
        """Load the installed model, then stay connected until ``stop()`` or cancellation.

        A stop says goodbye (``online`` = 0, retained: a clean disconnect sends no will)
        and returns within about a second whatever the runtime was doing: connected, in
        a transfer (its progress is on disk), connecting, or waiting to try again.
        """
        await self._load_installed()
        self._set_connection(ConnectionState.CONNECTING, force=True)
        backoff = self.reconnect_min
        refused_backoff = self.reconnect_refused
        stopper = asyncio.create_task(self._stop.wait())
        reporter = (
            asyncio.create_task(self.metrics.run_with(self.publish_metrics))
            if self.metrics is not None
            else None
        )
        session: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                session = asyncio.create_task(self._session())
                done, _ = await asyncio.wait({session, stopper}, return_when="FIRST_COMPLETED")
                if session not in done:
                    break  # stopped: the goodbye and the rest below
                error = session.exception()
                if error is not None and not isinstance(error, aiomqtt.MqttError):
                    raise error
                if self._established:
                    backoff = self.reconnect_min
                    self._established = False
                if _credentials_refused(error):
                    # Removed, or enrolled again elsewhere: trying often would not help.
                    self.stats["refused"] += 1
                    if self.connection.state is not ConnectionState.NOT_AUTHORIZED:
                        self._log(NOT_AUTHORIZED)
                    self._set_connection(ConnectionState.NOT_AUTHORIZED, _describe(error))
                    delay = random.uniform(refused_backoff / 2, refused_backoff)  # noqa: S311
                    refused_backoff = min(
                        refused_backoff * 2, max(_REFUSED_MAX, self.reconnect_refused)
                    )
                    await self._pause(delay, stopper, watch_enrolment=True)
                    continue
                refused_backoff = self.reconnect_refused
                self._log(f"disconnected: {_describe(error)}; reconnecting")
                self._set_connection(ConnectionState.DISCONNECTED, _describe(error))
                # Full jitter: devices that lost the broker together do not return together.
                delay = random.uniform(0, backoff)  # noqa: S311 - not crypto
                backoff = min(backoff * 2, self.reconnect_max)
                await self._pause(delay, stopper)
        finally:
            stopper.cancel()
            if session is not None:
                if not session.done():
                    # Stopped or cancelled from outside: the goodbye, then the session
                    # ends (before the model host closes).
                    await self._say_goodbye()
                    await _cancel_and_wait([session], again_after=_SESSION_CANCEL_AGAIN)
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await session
            if reporter is not None:
                await _cancel_and_wait([reporter])  # it waits in publishes too
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
                assert self.metrics is not None
                # The last partial interval goes to the spool; it is sent on the next run.
                await asyncio.to_thread(self.metrics.tick)
                self.metrics.spool.close()
            if self._finishing is not None:
                await _cancel_and_wait([self._finishing])
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._finishing
            if self._job is not None:
                self._job.close()  # the bitmap is saved: the transfer resumes next time
            self.host.close()
            self._set_connection(ConnectionState.STOPPED)

    async def publish_metrics(self, payload: bytes) -> bool:
        """Publish one metrics message on this device's ``metrics`` topic (QoS 1).

        Returns False, without raising, when the device is offline: the caller spools.
        """
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        try:
            await client.publish(self.topics.metrics(self.device_id), payload, qos=1)
        except aiomqtt.MqttError:
            return False
        return True

    async def _say_goodbye(self) -> None:
        """Publish ``online`` = 0 (retained) if connected, waiting briefly for the broker."""
        client = self._client
        if client is None or not self._connected.is_set():
            return
        self._leaving = True
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_TIMEOUT):
                await client.publish(self.topics.online(self.device_id), b"0", qos=1, retain=True)

    async def _pause(
        self, delay: float, stopper: asyncio.Task[Any], *, watch_enrolment: bool = False
    ) -> None:
        """Wait ``delay`` seconds before the next attempt; a stop ends the wait at once, and
        so does (with ``watch_enrolment``) a new enrolment in the state directory."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0 and not stopper.done():
            step = min(left, _ENROLMENT_POLL) if watch_enrolment else left
            await asyncio.wait({stopper}, timeout=step)
            if watch_enrolment and self._enrolment_stamp() != self._enrolled_stamp:
                if self._reload_enrolment():
                    return

    def _enrolment_stamp(self) -> int:
        try:
            return self.state.device_file.stat().st_mtime_ns
        except OSError:
            return 0

    def _reload_enrolment(self) -> bool:
        """Take a new enrolment of this device (``edge-runtime enroll`` run again while the
        runtime waits, refused): its credentials and keys. False if it cannot be used."""
        stamp = self._enrolment_stamp()
        try:
            config = self.state.enrollment()
            platform_key = self.state.platform_key()
            private_key = self.state.private_key()
        except (EdgeRuntimeError, OSError, ValueError) as exc:
            self._log(f"the enrolment in {self.state.root} cannot be read yet: {exc}")
            return False
        self._enrolled_stamp = stamp
        if config.device_id != self.device_id:
            self._log(f"{self.state.root} now holds device {config.device_id}: restart to run it")
            return False
        self.config, self._platform_key, self._private_key = config, platform_key, private_key
        host, port = self._mqtt_override
        self.mqtt_host = host or config.mqtt.host
        self.mqtt_port = port or config.mqtt.port
        self._log("a new enrolment was found: connecting with its credentials")
        return True

    def _set_connection(
        self, state: ConnectionState, detail: str = "", *, force: bool = False
    ) -> None:
        """Record the link's state; ``status.json`` is written when the state changes."""
        if state is self.connection.state and not force:
            return
        self.connection = Connection(state, int(time.time()), detail, pid=os.getpid())
        # A hint for other processes: a full or read-only disk must not stop the device.
        with contextlib.suppress(OSError):
            self.state.save_connection(self.connection)

    # ---- connection --------------------------------------------------------------------

    async def _session(self) -> None:
        online = self.topics.online(self.device_id)
        mqtt = self.config.mqtt
        client = aiomqtt.Client(
            self.mqtt_host,
            self.mqtt_port,
            username=mqtt.username,
            password=mqtt.password,
            identifier=mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(online, b"0", qos=1, retain=True),
            keepalive=15,
            timeout=10,
            max_inflight_messages=max(20, self.window_size),
            # paho leaves Nagle on: a chunk request would wait for the broker's delayed ACK
            # of the previous small packet (up to 40 ms) behind the PUBACKs of chunks.
            socket_options=[_NO_DELAY],
        )
        async with client:
            self._client = client
            self.stats["connections"] += 1
            tasks: list[asyncio.Task[None]] = []
            try:
                await client.subscribe(self.topics.desired(self.device_id), qos=1)
                await client.subscribe(self.topics.device_chunks(self.device_id), qos=1)
                self._broadcast_topic = None
                if self._job is not None:
                    await self._follow_broadcast(self._job.manifest)
                await client.publish(online, b"1", qos=1, retain=True)
                self._connected.set()
                self._established = True
                self._set_connection(ConnectionState.CONNECTED)
                self._log("connected")
                self._report(transition=True)
                tasks = [
                    asyncio.create_task(self._receive(client)),
                    asyncio.create_task(self._drive(client)),
                    asyncio.create_task(self._reporter(client)),
                ]
                # The first to end ends the session: the connection is lost, or a publish of
                # the driver or the reporter failed (no PUBACK in time). Noticed at once,
                # not with the next message, which may never come (after the last chunk):
                # the next session reports again and resumes the transfer.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
                raise aiomqtt.MqttError("the session ended")
            finally:
                self._connected.clear()
                self._client = None
                # They wait in publishes and subscribes: see _cancel_and_wait.
                await _cancel_and_wait(tasks)
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self._on_message(message)
            except aiomqtt.MqttError:
                raise
            except Exception as exc:  # a bad message must not end the runtime
                self._log(f"message on {message.topic} not handled: {exc!r}")

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        if topic == self.topics.desired(self.device_id):
            await self._on_desired(bytes(payload))
        else:
            self._on_chunk(message, bytes(payload))


def _credentials_refused(error: BaseException | None) -> bool:
    """The broker refused the credentials: CONNACK "bad user name or password" or "not
    authorized" (0x86/0x87 in MQTT 5; paho reports 4/5 of MQTT 3.1.1 as these too)."""
    if not isinstance(error, MqttConnectError):
        return False
    rc = error.rc
    if isinstance(rc, ReasonCode):
        return rc.value in (0x86, 0x87)
    return rc in (4, 5)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the session ended"
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)
