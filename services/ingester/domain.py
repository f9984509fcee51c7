"""Pure logic of the ingester: validate a device's message and turn it into line protocol.

No I/O here. A message is either ``Accepted`` (its points as line-protocol lines) or
``Refused`` with a reason code from ``Reason`` and a human-readable detail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from pydantic import ValidationError

from schemas.events import DeploymentTargetUpdated, TargetState
from schemas.telemetry import MAX_METRICS_PAYLOAD_BYTES, MetricsBatch, timestamp_ns
from schemas.topics import TopicKind, Topics

__all__ = [
    "DEPLOYMENT",
    "DEVICE",
    "INFERENCE",
    "Accepted",
    "Reason",
    "Refused",
    "batch_lines",
    "deployment_line",
    "validate_message",
]

INFERENCE = "inference"
DEVICE = "device"
DEPLOYMENT = "deployment"


class Reason(StrEnum):
    """Why a message was set aside (also the ``reason`` label of the rejected counter)."""

    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    MALFORMED_JSON = "malformed_json"
    INVALID = "invalid"
    DEVICE_MISMATCH = "device_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    #: The device was removed from the fleet (``eaf.device.removed``).
    DEVICE_REMOVED = "device_removed"
    #: InfluxDB refused the point itself (4xx): kept in the influx-rejects table.
    INFLUX_REJECTED = "influx_rejected"


@dataclass(frozen=True, slots=True)
class Accepted:
    device_id: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason
    detail: str
    #: The device the topic names, when it names one.
    device_id: str | None = None


def validate_message(
    topic: str,
    payload: bytes,
    *,
    topics: Topics,
    is_known: Callable[[str], bool],
    max_bytes: int = MAX_METRICS_PAYLOAD_BYTES,
) -> Accepted | Refused:
    """Check one message of ``devices/{id}/metrics`` and build its points.

    The size is checked before anything is parsed; NaN and infinities are refused by the
    schema; the payload must name the device of its topic, and that device must be known.
    """
    device_id: str | None = None
    try:
        parsed = topics.parse(topic)
        if parsed.kind is TopicKind.METRICS:
            device_id = parsed.ident
    except ValueError:
        pass
    if len(payload) > max_bytes:
        return Refused(
            Reason.OVERSIZE, f"{len(payload)} bytes, more than the {max_bytes} allowed", device_id
        )
    if device_id is None:
        return Refused(Reason.BAD_TOPIC, f"{topic!r} is not a devices/{{id}}/metrics topic")
    try:
        batch = MetricsBatch.model_validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            return Refused(Reason.MALFORMED_JSON, f"not JSON: {errors[0]['msg']}", device_id)
        return Refused(Reason.INVALID, _describe(exc), device_id)
    if batch.device_id != device_id:
        return Refused(
            Reason.DEVICE_MISMATCH,
            f"payload names device {batch.device_id!r} but was sent on {device_id!r}'s topic",
            device_id,
        )
    if not is_known(device_id):
        return Refused(
            Reason.UNKNOWN_DEVICE,
            f"device {device_id!r} is not enrolled (no eaf.device.enrolled seen)",
            device_id,
        )
    return Accepted(device_id, batch_lines(batch))


def _line(
    measurement: str,
    tags: dict[str, str],
    fields: dict[str, int | float | str],
    ts_ns: int,
) -> str:
    # influxdb_client's Point does the escaping of names, tags and string fields.
    point = Point(measurement)  # type: ignore[no-untyped-call]
    for key, value in tags.items():
        point.tag(key, value)  # type: ignore[no-untyped-call]
    for key, field in fields.items():
        point.field(key, field)  # type: ignore[no-untyped-call]
    point.time(ts_ns, WritePrecision.NS)  # type: ignore[no-untyped-call]
    return str(point.to_line_protocol())  # type: ignore[no-untyped-call]


def batch_lines(batch: MetricsBatch) -> tuple[str, ...]:
    """The batch's points as line protocol (nanosecond timestamps), samples in order."""
    lines: list[str] = []
    for s in batch.inference:
        tags = {"device": batch.device_id, "model": s.model, "version": s.version}
        fields: dict[str, int | float | str] = {
            "count": s.count,
            "errors": s.errors,
            "latency_p50_ms": float(s.latency_p50_ms),
            "latency_p95_ms": float(s.latency_p95_ms),
            "latency_p99_ms": float(s.latency_p99_ms),
            "latency_max_ms": float(s.latency_max_ms),
            "throughput": float(s.throughput),
        }
        lines.append(_line(INFERENCE, tags, fields, timestamp_ns(s.ts)))
    for d in batch.device:
        fields = {
            "cpu_percent": float(d.cpu_percent),
            "memory_bytes": d.memory_bytes,
            "spool_dropped": batch.spool_dropped,
        }
        if d.temperature_c is not None:
            fields["temperature_c"] = float(d.temperature_c)
        lines.append(_line(DEVICE, {"device": batch.device_id}, fields, timestamp_ns(d.ts)))
    return tuple(lines)


_STATE_CODES = {state: i for i, state in enumerate(TargetState)}


def deployment_line(event: DeploymentTargetUpdated) -> str:
    """One ``deployment`` point per target state change, at the event's own time."""
    fields: dict[str, int | float | str] = {
        "state": event.state.value,
        "state_code": _STATE_CODES[event.state],
        # 0/1 integers, not booleans, so that dashboards can sum them.
        "terminal": int(event.state.terminal),
        "active": int(event.state is TargetState.ACTIVE),
    }
    if event.bytes_received is not None:
        fields["bytes_received"] = event.bytes_received
    tags = {"deployment": str(event.deployment_id), "device": event.device_id}
    return _line(DEPLOYMENT, tags, fields, timestamp_ns(event.occurred_at))


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
