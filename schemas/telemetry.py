"""Metrics that devices publish on ``devices/{id}/metrics``."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, FiniteFloat

from schemas._base import WireModel

__all__ = ["MAX_METRICS_PAYLOAD_BYTES", "DeviceSample", "InferenceSample", "MetricsBatch"]

#: A metrics message larger than this is refused before parsing.
MAX_METRICS_PAYLOAD_BYTES = 256 * 1024

NonNegFloat = Annotated[FiniteFloat, Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=128)]


class InferenceSample(WireModel):
    """One interval of inference on one model version."""

    ts: AwareDatetime
    model: Name
    version: Name
    count: Annotated[int, Field(ge=0)]
    errors: Annotated[int, Field(ge=0)]
    latency_p50_ms: NonNegFloat
    latency_p95_ms: NonNegFloat
    latency_p99_ms: NonNegFloat
    latency_max_ms: NonNegFloat
    throughput: NonNegFloat


class DeviceSample(WireModel):
    """The device's own figures at one instant."""

    ts: AwareDatetime
    cpu_percent: NonNegFloat
    memory_bytes: Annotated[int, Field(ge=0)]
    temperature_c: FiniteFloat | None = None


class MetricsBatch(WireModel):
    """One message: samples with their own timestamps (a spooled batch keeps them)."""

    schema_version: Literal[1] = 1
    batch_id: uuid.UUID
    device_id: Name
    inference: Annotated[tuple[InferenceSample, ...], Field(max_length=1000)] = ()
    device: Annotated[tuple[DeviceSample, ...], Field(max_length=1000)] = ()
