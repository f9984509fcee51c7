"""MQTT topic names: builders and a strict parser.

A device id becomes a topic level, so it must not contain ``/``, ``+`` or ``#`` and must
not be empty; we go further and accept only a conservative alphabet that is also a valid
broker username.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.ids import ARTIFACT_ID_RE, DEVICE_ID_RE

__all__ = [
    "DEFAULT_PREFIX",
    "InvalidIdentifierError",
    "ParsedTopic",
    "TopicKind",
    "Topics",
    "validate_artifact_id",
    "validate_device_id",
]

DEFAULT_PREFIX = "eaf/v1"


class InvalidIdentifierError(ValueError):
    """An id that cannot be used as a topic level."""

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(
            f"invalid {kind} {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit (no '/', '+', '#')"
            if kind == "device id"
            else f"invalid {kind} {value!r}: expected 64 lowercase hex digits (a SHA-256)"
        )


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable as a topic level, else raise."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidIdentifierError("device id", str(device_id))
    return device_id


def validate_artifact_id(artifact_id: str) -> str:
    """Return ``artifact_id`` if it is a lowercase hex SHA-256, else raise."""
    if not isinstance(artifact_id, str) or not ARTIFACT_ID_RE.fullmatch(artifact_id):
        raise InvalidIdentifierError("artifact id", str(artifact_id))
    return artifact_id


class TopicKind(StrEnum):
    DESIRED = "desired"
    STATE = "state"
    ONLINE = "online"
    DEVICE_CHUNKS = "device_chunks"
    METRICS = "metrics"
    ARTIFACT_GET = "artifact_get"
    ARTIFACT_CHUNKS = "artifact_chunks"


_DEVICE_LEAVES = {
    "desired": TopicKind.DESIRED,
    "state": TopicKind.STATE,
    "online": TopicKind.ONLINE,
    "chunks": TopicKind.DEVICE_CHUNKS,
    "metrics": TopicKind.METRICS,
}
_ARTIFACT_LEAVES = {"get": TopicKind.ARTIFACT_GET, "chunks": TopicKind.ARTIFACT_CHUNKS}


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    #: The device id for device topics, the artifact id for artifact topics.
    ident: str


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (``eaf/v1`` unless configured)."""

    prefix: str = DEFAULT_PREFIX

    def _device(self, device_id: str, leaf: str) -> str:
        return f"{self.prefix}/devices/{validate_device_id(device_id)}/{leaf}"

    def _artifact(self, artifact_id: str, leaf: str) -> str:
        return f"{self.prefix}/artifacts/{validate_artifact_id(artifact_id)}/{leaf}"

    def desired(self, device_id: str) -> str:
        return self._device(device_id, "desired")

    def state(self, device_id: str) -> str:
        return self._device(device_id, "state")

    def online(self, device_id: str) -> str:
        return self._device(device_id, "online")

    def device_chunks(self, device_id: str) -> str:
        return self._device(device_id, "chunks")

    def metrics(self, device_id: str) -> str:
        return self._device(device_id, "metrics")

    def artifact_get(self, artifact_id: str) -> str:
        return self._artifact(artifact_id, "get")

    def artifact_chunks(self, artifact_id: str) -> str:
        return self._artifact(artifact_id, "chunks")

    # Wildcard subscriptions for the platform side.
    def all_devices(self, leaf: str) -> str:
        return f"{self.prefix}/devices/+/{leaf}"

    def all_artifact_gets(self) -> str:
        return f"{self.prefix}/artifacts/+/get"

    def parse(self, topic: str) -> ParsedTopic:
        """Split a topic into its kind and id; ``ValueError`` if it is not one of ours."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise ValueError(f"topic {topic!r} is not under {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[0] == "devices" and parts[2] in _DEVICE_LEAVES:
            return ParsedTopic(_DEVICE_LEAVES[parts[2]], validate_device_id(parts[1]))
        if len(parts) == 3 and parts[0] == "artifacts" and parts[2] in _ARTIFACT_LEAVES:
            return ParsedTopic(_ARTIFACT_LEAVES[parts[2]], validate_artifact_id(parts[1]))
        raise ValueError(f"topic {topic!r} is not an EdgeAIForge topic")
