"""The chunk server: answers ``artifacts/{id}/get`` with ciphertext chunks from the store.

Requests arrive on a shared subscription (``$share/deployer/...``), so several deployers
share the load. Each requested chunk goes, as stored, to the request's MQTT 5 response
topic with the correlation data echoed and the artifact id and index as user properties.
Publishes are QoS 1 and bounded in flight, which is the flow control the broker's queues
need. ``broadcast`` publishes a whole artifact once on ``artifacts/{id}/chunks`` for a wave.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from schemas.topics import Topics
from schemas.transfer import CHUNK_ARTIFACT_PROPERTY, CHUNK_INDEX_PROPERTY, ChunkRequest
from services.common.artifacts import ArtifactError, ArtifactInfo, ArtifactStore
from services.common.logging import get_logger
from services.deployer.mqtt import cancel_and_wait

__all__ = ["ChunkServer", "Publisher"]

log = get_logger(__name__)

#: ``authorize(device_id, artifact_id)``: may this device fetch this artifact now?
Authorizer = Callable[[str, str], Awaitable[bool]]


class Publisher(Protocol):
    """What the chunk server needs of an MQTT connection."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, properties: Properties | None = None
    ) -> None: ...


def chunk_properties(artifact_id: str, index: int, correlation: bytes | None) -> Properties:
    """MQTT 5 properties of one chunk message."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [
        (CHUNK_ARTIFACT_PROPERTY, artifact_id),
        (CHUNK_INDEX_PROPERTY, str(index)),
    ]
    if correlation:
        props.CorrelationData = correlation
    return props


class ChunkServer:
    """Serves chunk requests for the artifacts in ``store``."""

    def __init__(
        self,
        *,
        store: ArtifactStore,
        topics: Topics,
        publisher: Publisher,
        authorize: Authorizer,
        max_in_flight: int = 64,
    ) -> None:
        self.store = store
        self.topics = topics
        self.publisher = publisher
        self.authorize = authorize
        self._slots = asyncio.Semaphore(max_in_flight)
        self._infos: dict[str, ArtifactInfo] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Figures for operators and tests.
        self.requests = 0
        self.refused = 0
        self.chunks_sent = 0
        self.broadcast_chunks = 0
        #: How often each (device, artifact, index) was served (tests count resumes with it).
        self.served: Counter[tuple[str, str, int]] = Counter()

    def _info(self, artifact_id: str) -> ArtifactInfo:
        info = self._infos.get(artifact_id)
        if info is None:
            info = self.store.info(artifact_id)
            self._infos[artifact_id] = info
        return info

    def handle(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        """Take one request off the subscription; the chunks are sent in the background."""
        task = asyncio.get_running_loop().create_task(self._serve(topic, payload, properties))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        self.requests += 1
        try:
            artifact_id = self.topics.parse(topic).ident
            request = ChunkRequest.model_validate_json(payload)
        except (ValueError, ValidationError) as exc:
            self.refused += 1
            log.warning("chunk request refused: malformed", topic=topic, error=str(exc)[:200])
            return
        response_topic = getattr(properties, "ResponseTopic", None) if properties else None
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        # Chunks go only to the requesting device's own topic, never where a request says.
        own = self.topics.device_chunks(request.device_id)
        if response_topic != own:
            self.refused += 1
            log.warning("chunk request refused: response topic", device=request.device_id)
            return
        if not await self.authorize(request.device_id, artifact_id):
            self.refused += 1
            log.warning(
                "chunk request refused: no deployment",
                device=request.device_id,
                artifact=artifact_id,
            )
            return
        try:
            info = self._info(artifact_id)
        except ArtifactError as exc:
            self.refused += 1
            log.error(
                "chunk request for an unusable artifact", artifact=artifact_id, error=str(exc)
            )
            return
        wanted = [i for i in dict.fromkeys(request.indexes) if i < info.chunk_count]
        await asyncio.gather(
            *(self._send(own, info, i, correlation, device=request.device_id) for i in wanted)
        )

    async def _send(
        self,
        topic: str,
        info: ArtifactInfo,
        index: int,
        correlation: bytes | None,
        *,
        device: str,
    ) -> None:
        async with self._slots:
            data = await self.store.read_chunk(info, index)
            await self.publisher.publish(
                topic,
                data,
                qos=1,
                properties=chunk_properties(info.artifact_id, index, correlation),
            )
        self.chunks_sent += 1
        self.served[(device, info.artifact_id, index)] += 1

    async def broadcast(self, artifact_id: str) -> None:
        """Publish every chunk of ``artifact_id`` once on ``artifacts/{id}/chunks``.

        In index order, so a device that sees the last chunk knows the broadcast has passed
        and pulls what it missed at once; the next chunk is read while one is handed over,
        and at most ``max_in_flight`` wait for their PUBACK.
        """
        info = self._info(artifact_id)
        topic = self.topics.artifact_chunks(artifact_id)
        loop = asyncio.get_running_loop()
        sending: set[asyncio.Task[None]] = set()
        reading = loop.create_task(self.store.read_chunk(info, 0))
        try:
            for index in range(info.chunk_count):
                data = await reading
                if index + 1 < info.chunk_count:
                    reading = loop.create_task(self.store.read_chunk(info, index + 1))
                await self._slots.acquire()
                # Tasks start in the order they are made, and each hands its message to the
                # client before it first waits: the broker gets them in index order.
                task = loop.create_task(self._broadcast_one(topic, info, index, data))
                sending.add(task)
                task.add_done_callback(sending.discard)
                task.add_done_callback(lambda _t: self._slots.release())
            await asyncio.gather(*sending)
        finally:
            reading.cancel()
            for task in list(sending):
                task.cancel()
            await asyncio.gather(reading, *sending, return_exceptions=True)

    async def _broadcast_one(self, topic: str, info: ArtifactInfo, index: int, data: bytes) -> None:
        await self.publisher.publish(
            topic, data, qos=1, properties=chunk_properties(info.artifact_id, index, None)
        )
        self.broadcast_chunks += 1

    async def close(self) -> None:
        # Each waits in publishes: cancelled again until it ends (see cancel_and_wait).
        await cancel_and_wait(list(self._tasks))
        await asyncio.gather(*self._tasks, return_exceptions=True)
