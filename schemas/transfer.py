"""MQTT payloads of the transfer and of the device's reported state.

See ``docs/device-protocol.md`` for the flow: the device requests chunk indexes on
``artifacts/{id}/get`` (MQTT 5 response topic = its own ``chunks`` topic, correlation data
echoed), each chunk arrives as one message whose payload is the stored ciphertext and whose
user properties name the artifact and the index.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas.base import WireModel
from schemas.events import TargetState
from schemas.ids import DeviceId

__all__ = [
    "CHUNK_ARTIFACT_PROPERTY",
    "CHUNK_INDEX_PROPERTY",
    "MAX_INDEXES_PER_REQUEST",
    "MAX_STATE_PAYLOAD_BYTES",
    "ActiveModel",
    "ChunkRequest",
    "DeploymentProgress",
    "DeviceState",
    "Rejection",
    "RejectionCode",
]

#: MQTT 5 user properties on every chunk message.
CHUNK_ARTIFACT_PROPERTY = "artifact"
CHUNK_INDEX_PROPERTY = "index"
MAX_INDEXES_PER_REQUEST = 1024
#: A state message larger than this is refused before parsing.
MAX_STATE_PAYLOAD_BYTES = 64 * 1024


class ChunkRequest(WireModel):
    """Device → ``artifacts/{id}/get``: which chunk indexes to send.

    The MQTT 5 response topic names where to send them (the device's ``chunks`` topic).
    """

    device_id: DeviceId
    deployment_id: str
    indexes: Annotated[
        tuple[Annotated[int, Field(ge=0)], ...],
        Field(min_length=1, max_length=MAX_INDEXES_PER_REQUEST),
    ]


class RejectionCode(StrEnum):
    """Why a device refused a manifest or a transfer (stable, machine-readable)."""

    MALFORMED = "malformed"
    SIGNATURE = "signature"
    WRONG_DEVICE = "wrong_device"
    EXPIRED = "expired"
    #: Issued later than the device's clock allows: the device's clock is behind.
    CLOCK_SKEW = "clock_skew"
    REPLAY = "replay"
    SEALED_KEY = "sealed_key"
    CHUNK_INTEGRITY = "chunk_integrity"
    CHUNK_SIZE = "chunk_size"
    FOREIGN_CHUNK = "foreign_chunk"
    SIZE_MISMATCH = "size_mismatch"
    DIGEST_MISMATCH = "digest_mismatch"
    LOAD_FAILED = "load_failed"
    HEALTH_CHECK = "health_check"
    STORAGE = "storage"


class Rejection(WireModel):
    """The last thing the device refused, with the reason; the old model kept serving."""

    code: RejectionCode
    detail: str
    at: int
    #: The deployment the refused message claimed to belong to ("" if unknown/unverified).
    deployment_id: str = ""


class ActiveModel(WireModel):
    model: str
    version: str
    sequence: int
    artifact_id: str


class DeploymentProgress(WireModel):
    deployment_id: str
    state: TargetState
    model: str = ""
    version: str = ""
    sequence: int = 0
    chunks_received: int = 0
    chunk_count: int = 0
    bytes_received: int = 0
    detail: str = ""
    #: Set when ``state`` is ``failed`` or ``rolled_back``.
    error_code: RejectionCode | None = None


class DeviceState(WireModel):
    """Device → retained ``devices/{id}/state``."""

    schema_version: Literal[1] = 1
    device_id: str
    reported_at: int
    active: ActiveModel | None = None
    previous: ActiveModel | None = None
    deployment: DeploymentProgress | None = None
    rejection: Rejection | None = None
    runtime_version: str = ""
