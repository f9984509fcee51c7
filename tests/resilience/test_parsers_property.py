"""Property-based tests of every parser of outside input: whatever arrives, the answer
is a valid parse or the parser's own clear refusal, never another exception. Inputs are
random bytes, random JSON, and valid messages with single fields changed to hostile
values (huge numbers, NaN, control characters, long strings, far timestamps)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_runtime._state import StateDir
from edge_runtime._transfer import ChunkOutcome, Transfer, check_manifest
from edge_runtime.errors import TransferRefused
from schemas import crypto
from schemas.manifest import Manifest
from schemas.registry import VersionMetadata
from schemas.topics import Topics
from schemas.transfer import ChunkRequest, DeviceState
from services.api.routes.models import _properties
from services.common.config import ConfigError, load_settings
from services.common.errors import ServiceError
from services.ingester.domain import Accepted, Refused, validate_message

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = Ed25519PrivateKey.generate()
DEVICE = "dev-1"
TOPICS = Topics("eaf/v1")
INT64_MAX = 2**63 - 1
#: The timestamps InfluxDB can store (nanoseconds in a signed 64-bit integer).
INFLUX_MIN_NS, INFLUX_MAX_NS = -(2**63) + 2, 2**63 - 2

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=20,
)
hostile = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.sampled_from(["", "\x00", "../..", "a/b", "+", "#", "é" * 200, "1e999", "NaN", "-0"])
    | st.none()
    | st.booleans()
    | st.lists(st.integers(), max_size=3)
)


def good_manifest() -> dict[str, object]:
    now = int(time.time())
    return {
        "device_id": DEVICE, "deployment_id": "d1", "model": "m", "version": "1.0.0",
        "sequence": 5, "issued_at": now, "expires_at": now + 600, "artifact_id": "ab" * 32,
        "size": 10, "chunk_size": 4096, "chunk_count": 1,
        "nonce_prefix": base64.b64encode(b"1234567").decode(),
        "sealed_key": base64.b64encode(b"x" * 40).decode(),
    }  # fmt: skip


def signed(body: bytes) -> bytes:
    return json.dumps(
        {
            "signed": base64.b64encode(body).decode(),
            "signature": base64.b64encode(crypto.sign(KEY, body)).decode(),
        }
    ).encode()


def check(payload: bytes) -> None:
    try:
        manifest = check_manifest(
            payload, device_id=DEVICE, platform_key=KEY.public_key(), sequences={"m": 5}
        )
    except TransferRefused as refusal:
        assert refusal.code and refusal.detail
        return
    # Accepted: it is whole and consistent.
    assert manifest.device_id == DEVICE
    manifest.check_consistent()


# ---- manifest (retained desired topic) ---------------------------------------------------


@FAST
@given(st.binary(max_size=2000))
def test_manifest_from_random_bytes(payload: bytes) -> None:
    check(payload)


@FAST
@given(json_values)
def test_manifest_from_random_json(value: object) -> None:
    check(json.dumps(value).encode())


@FAST
@given(st.sampled_from(sorted(good_manifest())), hostile)
def test_signed_manifest_with_one_hostile_field(field: str, value: object) -> None:
    body = good_manifest()
    body[field] = value
    # Signed by the pinned key: only the body's own checks stand between it and the device.
    check(signed(json.dumps(body).encode()))


@FAST
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=400))
def test_signed_manifest_with_bytes_spliced_in(junk: bytes, at: int) -> None:
    body = json.dumps(good_manifest()).encode()
    check(signed(body[:at] + junk + body[at:]))


# ---- chunks (device side) and chunk requests (server side) -----------------------------


def transfer(tmp: Path) -> tuple[Transfer, bytes]:
    dek = os.urandom(32)
    plain = os.urandom(10_000)
    prefix = os.urandom(crypto.NONCE_PREFIX_LEN)
    fields = good_manifest() | {
        "artifact_id": hashlib.sha256(plain).hexdigest(),
        "size": len(plain), "chunk_size": 4096, "chunk_count": 3,
        "nonce_prefix": base64.b64encode(prefix).decode(),
        "sealed_key": base64.b64encode(crypto.seal_dek(
            dek, X25519PrivateKey.generate().public_key().public_bytes_raw(),
            device_id=DEVICE, artifact_id="ab" * 32)).decode(),
    }  # fmt: skip
    manifest = Manifest.model_validate(fields)
    job = Transfer(StateDir(tmp), manifest, b"{}", dek)
    return job, prefix


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-(2**40), max_value=2**40),
            st.sampled_from(["", "ab" * 32, "zz", "same"]),
            st.binary(max_size=5000),
        ),
        max_size=6,
    )
)
def test_random_chunks_are_refused_without_harm(chunks: list[tuple[int, str, bytes]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job, _ = transfer(Path(tmp))
        try:
            for index, artifact, payload in chunks:
                if artifact == "same":
                    artifact = job.manifest.artifact_id
                try:
                    outcome = job.accept(index, artifact, payload)
                except TransferRefused as refusal:
                    assert refusal.code and refusal.detail
                    continue
                # Random bytes never authenticate: nothing is taken as received.
                assert outcome is not ChunkOutcome.NEW
            assert job.chunks_received == 0
        finally:
            job.close()


@FAST
@given(st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode()))
def test_chunk_request_and_device_state_parse_or_refuse(payload: bytes) -> None:
    for model in (ChunkRequest, DeviceState):
        try:
            model.model_validate_json(payload)
        except ValidationError:
            pass


# ---- metrics (ingester) ------------------------------------------------------------------


def good_batch() -> dict[str, object]:
    ts = datetime.now(UTC).isoformat()
    return {
        "batch_id": str(uuid.uuid4()), "device_id": DEVICE,
        "inference": [{"ts": ts, "model": "m", "version": "1", "count": 3, "errors": 1,
                       "latency_p50_ms": 1.0, "latency_p95_ms": 2.0, "latency_p99_ms": 3.0,
                       "latency_max_ms": 4.0, "throughput": 0.3}],
        "device": [{"ts": ts, "cpu_percent": 5.0, "memory_bytes": 1000}],
    }  # fmt: skip


def ingest(topic: str, payload: bytes) -> None:
    result = validate_message(topic, payload, topics=TOPICS, is_known=lambda _: True)
    assert isinstance(result, Accepted | Refused)
    if isinstance(result, Refused):
        assert result.detail
        return
    # Accepted means InfluxDB can store every point: 64-bit integers, its time range.
    for line in result.lines:
        _, fields, stamp = line.rsplit(" ", 2)
        assert INFLUX_MIN_NS <= int(stamp) <= INFLUX_MAX_NS, line
        for field in fields.split(","):
            value = field.split("=", 1)[1]
            if value.endswith("i"):
                assert -(2**63) <= int(value[:-1]) <= INT64_MAX, line
            elif not value.startswith('"'):
                assert math.isfinite(float(value)), line


@FAST
@given(st.text(max_size=80), st.binary(max_size=1000))
def test_metrics_random_topic_and_bytes(topic: str, payload: bytes) -> None:
    ingest(topic, payload)


@FAST
@given(st.sampled_from(["inference", "device"]), st.text(min_size=1, max_size=20), hostile)
def test_metrics_sample_with_one_hostile_field(kind: str, field: str, value: object) -> None:
    batch = good_batch()
    sample = batch[kind][0]  # type: ignore[index]
    keys = sorted(sample)
    sample[keys[hash(field) % len(keys)]] = value
    ingest(TOPICS.metrics(DEVICE), json.dumps(batch, allow_nan=True, default=str).encode())


@FAST
@given(
    st.datetimes(timezones=st.just(UTC)),
    st.integers(min_value=0, max_value=2**80),
    st.integers(min_value=0, max_value=2**80),
)
def test_metrics_extreme_times_and_counts(ts: datetime, count: int, memory: int) -> None:
    batch = good_batch()
    batch["inference"][0].update(ts=ts.isoformat(), count=count, errors=0)  # type: ignore[index]
    batch["device"][0].update(ts=ts.isoformat(), memory_bytes=memory)  # type: ignore[index]
    ingest(TOPICS.metrics(DEVICE), json.dumps(batch).encode())


# ---- configuration -----------------------------------------------------------------------

SECTIONS = ["model_repository", "deployment", "security", "nats", "mqtt", "influxdb",
            "ingester", "database", "api", "deployer", "validator", "nope"]  # fmt: skip
toml_values = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f)
        else repr(f))
    | st.text(max_size=40).map(lambda s: json.dumps(s))
    | st.booleans().map(lambda b: "true" if b else "false")
    | st.just("[1, 2]")
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(SECTIONS),
        st.dictionaries(st.sampled_from(["url", "port", "host", "password", "chunk_size",
                                         "max_upload_bytes", "manifest_ttl", "batch_size",
                                         "tick_interval", "storage_path", "bogus"]),
                        toml_values, max_size=3),
        max_size=3,
    ),
    st.binary(max_size=30),
)  # fmt: skip
def test_config_files_load_or_say_which_key(data: dict[str, dict[str, str]], junk: bytes) -> None:
    import tempfile

    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
        for section, keys in data.items()
    )
    with tempfile.TemporaryDirectory() as tmp:
        for content in (text.encode(), junk, text.encode() + junk):
            path = Path(tmp) / "c.toml"
            path.write_bytes(content)
            try:
                load_settings(path)
            except ConfigError as exc:
                assert str(path) in str(exc)
                assert exc.problems


# ---- upload metadata (the API's query parameters) ----------------------------------------


@FAST
@given(
    st.text(max_size=250), st.lists(st.text(max_size=70), max_size=70),
    st.lists(st.text(max_size=60), max_size=5), st.one_of(st.none(), st.text(max_size=20)),
)  # fmt: skip
def test_upload_metadata_parses_or_is_refused(
    task: str, tags: list[str], props: list[str], parent: str | None
) -> None:
    try:
        VersionMetadata(
            task=task, tags=tuple(tags), properties=_properties(props), parent_version=parent
        )
    except (ValidationError, ServiceError):
        pass
