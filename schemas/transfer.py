"""MQTT payloads of the transfer and of the device's reported state."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas._base import WireModel
from schemas.events import TargetState

__all__ = [
    "CHUNK_ARTIFACT_PROPERTY",
    "CHUNK_INDEX_PROPERTY",
    "MAX_INDEXES_PER_REQUEST",
    "ActiveModel",
    "ChunkRequest",
    "DeploymentProgress",
    "DeviceState",
]

#: MQTT 5 user properties on every chunk message.
CHUNK_ARTIFACT_PROPERTY = "artifact"
CHUNK_INDEX_PROPERTY = "index"
MAX_INDEXES_PER_REQUEST = 1024


class ChunkRequest(WireModel):
    """Device → ``artifacts/{id}/get``: which chunk indexes to send.

    The MQTT 5 response topic names where to send them (the device's ``chunks`` topic).
    """

    device_id: str
    deployment_id: str
    indexes: Annotated[
        tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1, max_length=1024)
    ]


class ActiveModel(WireModel):
    model: str
    version: str
    sequence: int
    artifact_id: str


class DeploymentProgress(WireModel):
    deployment_id: str
    state: TargetState
    chunks_received: int = 0
    chunk_count: int = 0
    bytes_received: int = 0
    detail: str = ""


class DeviceState(WireModel):
    """Device → retained ``devices/{id}/state``."""

    schema_version: Literal[1] = 1
    device_id: str
    reported_at: int
    active: ActiveModel | None = None
    previous: ActiveModel | None = None
    deployment: DeploymentProgress | None = None
