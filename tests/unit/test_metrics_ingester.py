"""The ingester's pure validation and line protocol."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from schemas.telemetry import DeviceSample, InferenceSample, MetricsBatch
from schemas.topics import Topics
from services.ingester.domain import Accepted, Reason, Refused, batch_lines, validate_message

T = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
TOPICS = Topics()


def sample(**kw: object) -> InferenceSample:
    base: dict[str, object] = {
        "ts": T, "model": "m o,d=el", "version": "1.0", "count": 10, "errors": 1,
        "latency_p50_ms": 1.5, "latency_p95_ms": 2.5, "latency_p99_ms": 3.5,
        "latency_max_ms": 4.5, "throughput": 1.0,
    }  # fmt: skip
    base.update(kw)
    return InferenceSample.model_validate(base)


def batch(device: str = "dev-1") -> MetricsBatch:
    return MetricsBatch(
        batch_id=uuid.uuid4(),
        device_id=device,
        inference=(sample(),),
        device=(DeviceSample(ts=T, cpu_percent=12.5, memory_bytes=1000),),
    )


def check(payload: bytes, topic: str = "eaf/v1/devices/dev-1/metrics") -> Accepted | Refused:
    return validate_message(topic, payload, topics=TOPICS, is_known=lambda d: d == "dev-1")


def test_line_protocol_keeps_exact_timestamps_types_and_escapes_tags() -> None:
    inference, device = batch_lines(batch())
    ns = "1893553445678901000"
    assert inference == (
        r"inference,device=dev-1,model=m\ o\,d\=el,version=1.0 count=10i,errors=1i,"
        "latency_max_ms=4.5,latency_p50_ms=1.5,latency_p95_ms=2.5,latency_p99_ms=3.5,"
        f"throughput=1 {ns}"  # no "i": a float field
    )
    assert (
        device == f"device,device=dev-1 cpu_percent=12.5,memory_bytes=1000i,spool_dropped=0i {ns}"
    )


def test_each_kind_of_bad_message_gets_its_reason() -> None:
    good = batch().model_dump_json().encode()
    assert isinstance(check(good), Accepted)
    cases = {
        b"{not json": Reason.MALFORMED_JSON,
        json.dumps({"batch_id": 1}).encode(): Reason.INVALID,
        good.replace(b'"latency_p95_ms":2.5', b'"latency_p95_ms":NaN'): Reason.INVALID,
        b" " * (300 * 1024): Reason.OVERSIZE,
        batch("dev-2").model_dump_json().encode(): Reason.DEVICE_MISMATCH,
    }
    for payload, reason in cases.items():
        result = check(payload)
        assert isinstance(result, Refused) and result.reason is reason, (payload[:40], result)
    stranger = check(batch("dev-9").model_dump_json().encode(), "eaf/v1/devices/dev-9/metrics")
    assert isinstance(stranger, Refused) and stranger.reason is Reason.UNKNOWN_DEVICE
    assert stranger.device_id == "dev-9"
    wrong = check(good, "eaf/v1/devices/dev-1/state")
    assert isinstance(wrong, Refused) and wrong.reason is Reason.BAD_TOPIC
