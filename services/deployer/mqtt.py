"""The deployer's MQTT connection, kept up with jittered back-off (aiomqtt reconnect loop).

Messages of the subscriptions go to one callback; ``publish`` waits (bounded) for the
connection. Subscriptions are made again after every reconnect. A message's ``retain``
flag is set only on one the broker delivers from its store when a subscription is made
(retain-as-published off): the deployer tells a device heard now from one heard before.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from schemas.config import MqttConfig
from services.common.logging import get_logger

__all__ = ["MqttLink", "MqttUnavailableError", "cancel_and_wait"]

log = get_logger(__name__)


class MqttUnavailableError(Exception):
    """The broker could not be reached in time; the caller retries later."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(
            f"MQTT broker {host}:{port} not reachable within {timeout:g} s: check [mqtt] "
            "host, port and credentials, and that the broker runs"
        )


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, again_after: float = 0.1) -> None:
    """Cancel ``tasks`` and return when every one has ended; their outcomes stay in them.

    A task still running ``again_after`` seconds after a cancellation is cancelled again: in
    Python 3.11 ``asyncio.wait_for``, which aiomqtt's publish, subscribe and disconnect wait
    in, returns its result instead of raising when the result arrives together with the
    cancellation, so a loop around such a call goes on as if it had never been cancelled
    (and a plain ``await task`` waits for it forever).
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)


MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]


class MqttLink:
    """A reconnecting MQTT 5 client for a platform service."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        subscriptions: Sequence[str] = (),
        max_inflight: int = 256,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        self.on_message: MessageHandler | None = None
        self.max_inflight = max_inflight
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(
        self, *, on_message: MessageHandler | None = None, wait: float | None = 10.0
    ) -> None:
        """Connect in the background; the subscriptions' messages go to ``on_message``."""
        self.on_message = on_message
        self._task = asyncio.create_task(self._loop())
        if wait:
            await self.wait_connected(wait)

    async def stop(self) -> None:
        if self._task is not None:
            # A cancellation absorbed by a subscribe or by the disconnect's wait would leave
            # the loop connected (or reconnecting): see cancel_and_wait. A graceful
            # disconnect takes milliseconds; one that takes a second is cut.
            await cancel_and_wait([self._task], again_after=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await cancel_and_wait(list(self._handlers))
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise MqttUnavailableError(self.config.host, self.config.port, timeout) from None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Publish once the link is up; raises ``MqttUnavailableError`` or ``MqttError``."""
        await self.wait_connected(timeout)
        client = self._client
        if client is None:
            raise MqttUnavailableError(self.config.host, self.config.port, timeout)
        await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    async def _loop(self) -> None:
        backoff = 0.2
        cfg = self.config
        while True:
            try:
                async with aiomqtt.Client(
                    cfg.host,
                    cfg.port,
                    username=cfg.username,
                    password=cfg.password.get_secret_value() if cfg.password else None,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    keepalive=cfg.keepalive,
                    timeout=30,
                    max_inflight_messages=self.max_inflight,
                    # paho leaves Nagle on: small packets (PUBACKs, manifests) would wait
                    # for the broker's delayed ACK behind the chunks.
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                ) as client:
                    for topic in self.subscriptions:
                        await client.subscribe(
                            topic, options=SubscribeOptions(qos=1, retainAsPublished=False)
                        )
                    self._client = client
                    self.connections += 1
                    self._connected.set()
                    backoff = 0.2
                    async for message in client.messages:
                        if self.on_message is not None:
                            await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                log.warning("mqtt connection lost", error=str(exc), client=self.client_id)
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, 10.0)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        assert self.on_message is not None
        try:
            await self.on_message(message)
        except Exception:  # a bad message never ends the connection
            log.exception("mqtt message handler failed", topic=str(message.topic))
