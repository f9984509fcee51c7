"""Metrics that devices publish on ``devices/{id}/metrics``.

A point's identity in InfluxDB is its measurement, its tags and its timestamp. For
``inference`` that is (device, model, version, ts); for ``device`` it is (device, ts). A
batch that holds two samples with the same identity is refused, so no point of a batch
can overwrite a different point; a replayed batch writes the same identities with the
same values, which is why replays duplicate nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, Field, FiniteFloat, model_validator

from schemas.base import WireModel, between

__all__ = [
    "MAX_METRICS_PAYLOAD_BYTES",
    "MAX_SAMPLES_PER_BATCH",
    "DeviceSample",
    "InferenceSample",
    "MetricsBatch",
    "timestamp_ns",
]

#: A metrics message larger than this is refused before parsing.
MAX_METRICS_PAYLOAD_BYTES = 256 * 1024
#: Samples of one kind in one batch.
MAX_SAMPLES_PER_BATCH = 1000

NonNegFloat = Annotated[FiniteFloat, Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
#: InfluxDB's integers are signed 64-bit: a larger count could be accepted here and then
#: refused by InfluxDB, so it is refused here, with the reason, instead.
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: The instants InfluxDB can store (nanoseconds since the epoch in a signed 64-bit integer).
Timestamp = Annotated[
    AwareDatetime,
    between(
        datetime(1677, 9, 22, tzinfo=UTC),
        datetime(2262, 4, 11, tzinfo=UTC),
        "timestamp is outside what InfluxDB stores (1677-09-22 to 2262-04-11)",
    ),
]


class InferenceSample(WireModel):
    """One interval of inference on one model version; ``ts`` is the interval's end."""

    ts: Timestamp
    model: Name
    version: Name
    #: Inferences that finished in the interval, failed ones included.
    count: Count
    #: Of ``count``, the ones that failed.
    errors: Count
    latency_p50_ms: NonNegFloat
    latency_p95_ms: NonNegFloat
    latency_p99_ms: NonNegFloat
    latency_max_ms: NonNegFloat
    #: Inferences per second over the interval.
    throughput: NonNegFloat

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.errors > self.count:
            raise ValueError(f"errors ({self.errors}) cannot exceed count ({self.count})")
        return self


class DeviceSample(WireModel):
    """The device's own figures at one instant."""

    ts: Timestamp
    cpu_percent: NonNegFloat
    memory_bytes: Count
    temperature_c: FiniteFloat | None = None


class MetricsBatch(WireModel):
    """One message: samples with their own timestamps (a spooled batch keeps them)."""

    schema_version: Literal[1] = 1
    batch_id: uuid.UUID
    device_id: Name
    inference: Annotated[tuple[InferenceSample, ...], Field(max_length=MAX_SAMPLES_PER_BATCH)] = ()
    device: Annotated[tuple[DeviceSample, ...], Field(max_length=MAX_SAMPLES_PER_BATCH)] = ()
    #: Batches the device's spool has dropped so far because it was full (cumulative).
    spool_dropped: Count = 0

    @model_validator(mode="after")
    def _unique_points(self) -> Self:
        # Two samples with one identity would become one InfluxDB point, the later silently
        # replacing the earlier: refuse the batch instead of losing data unnoticed.
        seen: set[tuple[str, str, int]] = set()
        for s in self.inference:
            key = (s.model, s.version, _ns(s.ts))
            if key in seen:
                raise ValueError(
                    f"two inference samples for {s.model} {s.version} at {s.ts.isoformat()}: "
                    "each (model, version, ts) may appear once"
                )
            seen.add(key)
        stamps: set[int] = set()
        for d in self.device:
            if _ns(d.ts) in stamps:
                raise ValueError(
                    f"two device samples at {d.ts.isoformat()}: each ts may appear once"
                )
            stamps.add(_ns(d.ts))
        return self


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_EPOCH_ORDINAL = _EPOCH.toordinal()
_MICROSECOND = timedelta(microseconds=1)


def timestamp_ns(ts: datetime) -> int:
    """``ts`` as integer nanoseconds since the epoch, exactly (no float rounding)."""
    # Integer arithmetic on the fields: twice as fast as ``(ts - _EPOCH) // 1 µs``, and the
    # ingester calls it for every point (validation and line protocol).
    seconds = (ts.toordinal() - _EPOCH_ORDINAL) * 86400 + ts.hour * 3600
    micros = (seconds + ts.minute * 60 + ts.second) * 1_000_000 + ts.microsecond
    offset = ts.utcoffset()
    if offset:
        micros -= offset // _MICROSECOND
    return micros * 1000


_ns = timestamp_ns
