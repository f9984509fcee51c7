"""Uploads flow through the validator and the analyzer over a real nats-server.

Real models are accepted and profiled; hostile and broken ones are rejected with the
reason, and the validator still answers afterwards; an event handled twice publishes one
report.
"""

from __future__ import annotations

import asyncio
import io
import json
import stat
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import nats
import onnx
import pytest

from schemas.config import Settings
from schemas.events import ModelAnalyzed, ModelRejected, ModelUploaded, ModelValidated
from schemas.rpc import HealthRequest, health_rpc
from services.analyzer.app import create_service as create_analyzer
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.validator.app import create_service as create_validator
from tests.support.models import (
    cnn_model,
    custom_domain_model,
    external_data_model,
    hanging_loop_model,
    huge_tensor_model,
    large_model,
    sklearn_pipeline_model,
    tiny_model,
    to_bytes,
    transformer_block_model,
)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass
class Pipeline:
    """Running validator + analyzer, the artifact store they read, and every event seen."""

    settings: Settings
    store: ArtifactStore
    bus: Bus
    seen: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    #: The last upload sequence given per model, as the registry counts them.
    sequences: dict[str, int] = field(default_factory=dict)

    async def upload(
        self, model: str, data: bytes, *, version: str = "1.0.0", reference: bytes | None = None
    ) -> ModelUploaded:
        put = await self.store.put(_chunks(data))
        ref_id = (await self.store.put(_chunks(reference))).info.artifact_id if reference else None
        self.sequences[model] = self.sequences.get(model, 0) + 1
        event = ModelUploaded(
            model=model,
            version=version,
            sequence=self.sequences[model],
            artifact_id=put.info.artifact_id,
            size_bytes=len(data),
            reference_artifact_id=ref_id,
        )
        await self.bus.publish(event)
        return event

    def events(self, subject: str, model: str) -> list[dict[str, object]]:
        return [body for subj, body in self.seen if subj == subject and body["model"] == model]

    async def wait_for(self, subject: str, model: str, timeout: float = 90.0) -> dict[str, object]:
        async with asyncio.timeout(timeout):
            while not (found := self.events(subject, model)):
                await asyncio.sleep(0.05)
        return found[0]

    async def verdict(self, model: str, timeout: float = 90.0) -> tuple[str, dict[str, object]]:
        """The first validated/rejected event for ``model``."""
        async with asyncio.timeout(timeout):
            while True:
                for subject in (ModelValidated.SUBJECT, ModelRejected.SUBJECT):
                    if found := self.events(subject, model):
                        return subject, found[0]
                await asyncio.sleep(0.05)


@pytest.fixture
async def pipeline(nats_server, tmp_path: Path, unique_id) -> AsyncIterator[Pipeline]:
    settings = Settings.model_validate(
        {
            "nats": {"url": nats_server.url, "retry_backoff": [0.5]},
            "model_repository": {"storage_path": str(tmp_path / "models")},
            "security": {
                "encryption_key_path": str(tmp_path / "keys" / "kek.key"),
                "signing_key_path": str(tmp_path / "keys" / "signing.pem"),
                "dev_mode": True,
            },
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'eaf.db'}"},
            "validator": {"sandbox": {"cpu_seconds": 30, "memory_mb": 2048, "wall_seconds": 15}},
            "analyzer": {"warmup_runs": 2, "runs": 10, "sandbox": {"wall_seconds": 60}},
        }
    )
    store = ArtifactStore(
        root=tmp_path / "models",
        kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )
    nc = await nats.connect(nats_server.url)
    seen: list[tuple[str, dict[str, object]]] = []

    async def collect(msg) -> None:
        seen.append((msg.subject, json.loads(msg.data)))

    for subject in (ModelValidated.SUBJECT, ModelRejected.SUBJECT, ModelAnalyzed.SUBJECT):
        await nc.subscribe(subject, cb=collect)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(create_validator(settings, durable=unique_id("validator-")))
        await stack.enter_async_context(create_analyzer(settings, durable=unique_id("analyzer-")))
        bus = await stack.enter_async_context(Bus(settings.nats, service="test"))
        yield Pipeline(settings, store, bus, seen)
    await nc.close()


def _with_external_data(model: onnx.ModelProto) -> bytes:
    """A ZIP upload: the model and its weights file side by side."""
    buffer = io.BytesIO()
    weights = model.graph.initializer[0]
    raw = weights.raw_data
    weights.ClearField("raw_data")
    weights.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(len(raw)))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("model.onnx", to_bytes(model))
        zf.writestr("weights.bin", raw)
    return buffer.getvalue()


def _symlinked_external_data() -> bytes:
    """A ZIP upload whose weights file is a symbolic link to /etc/passwd."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("model.onnx", to_bytes(external_data_model("weights.bin")))
        link = zipfile.ZipInfo("weights.bin")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buffer.getvalue()


async def test_real_models_are_validated_and_analyzed(pipeline: Pipeline, unique_id) -> None:
    models: dict[str, Callable[[], bytes]] = {
        "cnn": lambda: to_bytes(cnn_model()),
        "transformer": lambda: to_bytes(transformer_block_model()),
        "sklearn": lambda: to_bytes(sklearn_pipeline_model()),
        "external": lambda: _with_external_data(large_model(1)),
        "large": lambda: to_bytes(large_model(2)),
    }
    names = {kind: unique_id(f"{kind}-") for kind in models}
    for kind, build in models.items():
        await pipeline.upload(names[kind], build())
    reports = {}
    for kind, name in names.items():
        subject, body = await pipeline.verdict(name)
        assert subject == ModelValidated.SUBJECT, (kind, body)
        analyzed = ModelAnalyzed.model_validate(
            await pipeline.wait_for(ModelAnalyzed.SUBJECT, name)
        )
        reports[kind] = analyzed.report
    validated = ModelValidated.model_validate(
        pipeline.events(ModelValidated.SUBJECT, names["cnn"])[0]
    )
    assert [c.name for c in validated.report.checks][:7] == [
        "file", "load", "external_data", "policy", "checker", "shape_inference", "trial_inference"
    ]  # fmt: skip
    assert validated.report.checks[-1].outcome == "skipped"  # no reference uploaded

    cnn = reports["cnn"]
    assert {"ai.onnx::Conv", "ai.onnx::BatchNormalization", "ai.onnx::Relu",
            "ai.onnx::MaxPool", "ai.onnx::Gemm"} <= set(cnn.operators)  # fmt: skip
    assert cnn.operators["ai.onnx::Conv"].count == 2
    assert cnn.inputs[0].dynamic_axes == (0,)
    assert cnn.latency is not None and 0 < cnn.latency.p50_ms <= cnn.latency.p95_ms
    # Timed as devices run each: prepacked, unless a device maps the weights (a package,
    # or a plain model with large embedded weights).
    assert cnn.latency.prepacked is True
    for mapped in ("external", "large"):
        latency = reports[mapped].latency
        assert latency is not None and latency.prepacked is False, mapped
    assert cnn.requirements.opsets == {"ai.onnx": 17}
    assert cnn.macs > 0 and cnn.peak_activation_bytes > 0

    transformer = reports["transformer"]
    assert transformer.operators["ai.onnx::MatMul"].count == 8
    assert "ai.onnx::Softmax" in transformer.requirements.operators

    sklearn = reports["sklearn"]
    assert sklearn.requirements.opsets["ai.onnx.ml"] >= 1
    assert any(op.startswith("ai.onnx.ml::") for op in sklearn.requirements.operators)

    external = reports["external"]
    assert external.parameter_bytes == 1024 * 1024  # 256 x 1024 float32 weights


async def test_second_version_is_diffed_against_the_first(pipeline: Pipeline, unique_id) -> None:
    name = unique_id("cnn-")
    await pipeline.upload(name, to_bytes(cnn_model(classes=10)), version="1.0.0")
    await pipeline.wait_for(ModelAnalyzed.SUBJECT, name)
    await pipeline.upload(name, to_bytes(cnn_model(classes=5)), version="1.1.0")
    async with asyncio.timeout(90):
        while len(pipeline.events(ModelAnalyzed.SUBJECT, name)) < 2:
            await asyncio.sleep(0.05)
    second = ModelAnalyzed.model_validate(pipeline.events(ModelAnalyzed.SUBJECT, name)[1])
    diff = second.report.diff
    assert second.version == "1.1.0" and diff is not None
    assert diff.previous_version == "1.0.0"
    assert not diff.signature_compatible
    assert any("'logits' axis 1 changed 10 -> 5" in c for c in diff.signature_changes)
    assert diff.parameters_before - diff.parameters_after == 5 * 32 + 5  # fc weights + bias
    assert diff.operators_added == () and diff.operators_removed == ()


async def test_a_hotfix_is_diffed_against_the_version_uploaded_before_it(
    pipeline: Pipeline, unique_id
) -> None:
    name = unique_id("hotfix-")
    uploads = [("1.0.0", 10), ("2.0.0", 7), ("1.0.1", 3)]  # the hotfix comes last
    for count, (version, classes) in enumerate(uploads, 1):
        await pipeline.upload(name, to_bytes(cnn_model(classes=classes)), version=version)
        async with asyncio.timeout(90):
            while len(pipeline.events(ModelAnalyzed.SUBJECT, name)) < count:
                await asyncio.sleep(0.05)
    analyzed = [
        ModelAnalyzed.model_validate(b) for b in pipeline.events(ModelAnalyzed.SUBJECT, name)
    ]
    hotfix = analyzed[2]
    assert hotfix.version == "1.0.1" and hotfix.report.diff is not None
    # Diffed against 2.0.0, uploaded just before it, not against 1.0.0 (semver order).
    assert hotfix.report.diff.previous_version == "2.0.0"
    assert any("'logits' axis 1 changed 7 -> 3" in c for c in hotfix.report.diff.signature_changes)
    assert analyzed[1].report.diff is not None
    assert analyzed[1].report.diff.previous_version == "1.0.0"
    # The validator passes the registry's upload order on.
    validated = [
        ModelValidated.model_validate(b) for b in pipeline.events(ModelValidated.SUBJECT, name)
    ]
    assert [(v.version, v.sequence) for v in validated] == [
        ("1.0.0", 1),
        ("2.0.0", 2),
        ("1.0.1", 3),
    ]


HOSTILE: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("passwd", lambda: to_bytes(external_data_model("../../etc/passwd")), "external_data",
     "escapes the model's directory"),
    ("absolute", lambda: to_bytes(external_data_model("/etc/passwd")), "external_data",
     "absolute path"),
    ("symlink", _symlinked_external_data, "file", "is a symbolic link"),
    ("custom", lambda: to_bytes(custom_domain_model()), "policy", "'com.evil' is not allowed"),
    ("huge", lambda: to_bytes(huge_tensor_model()), "policy",
     "declares 1,000,000,000,000 elements"),
    ("truncated", lambda: to_bytes(cnn_model())[:5000], "load", "not a valid ONNX protobuf"),
    ("random", lambda: bytes(range(256)) * 16, "load", "not a valid ONNX protobuf"),
    ("empty", lambda: b"", "file", "the file is empty"),
    ("hang", lambda: to_bytes(hanging_loop_model()), "trial_inference",
     "did not finish within 15 s"),
]  # fmt: skip


async def test_hostile_models_are_rejected_and_the_service_still_answers(
    pipeline: Pipeline, unique_id
) -> None:
    names = {}
    for label, build, _, _ in HOSTILE:
        names[label] = unique_id(f"{label}-")
        await pipeline.upload(names[label], build())
    for label, _, check, text in HOSTILE:
        subject, body = await pipeline.verdict(names[label], timeout=120)
        assert subject == ModelRejected.SUBJECT, (label, body)
        rejected = ModelRejected.model_validate(body)
        failure = rejected.report.first_failure
        assert failure is not None and failure.name == check, (label, rejected.reason)
        assert text in failure.message, (label, failure.message)
        assert rejected.reason.startswith(f"{check}: ")
    # The validator is alive: it answers its health subject and accepts the next model.
    health = await pipeline.bus.call(health_rpc("validator"), HealthRequest())
    assert health.service == "validator"
    name = unique_id("after-")
    await pipeline.upload(name, to_bytes(tiny_model()))
    subject, _ = await pipeline.verdict(name)
    assert subject == ModelValidated.SUBJECT
    # Nothing rejected reaches the analyzer.
    assert not any(pipeline.events(ModelAnalyzed.SUBJECT, n) for n in names.values())


async def test_the_same_event_twice_publishes_one_report(pipeline: Pipeline, unique_id) -> None:
    name = unique_id("twice-")
    event = await pipeline.upload(name, to_bytes(tiny_model()))
    await pipeline.wait_for(ModelAnalyzed.SUBJECT, name)
    # Deliver the same event again past the stream's duplicate filter (another message id),
    # as a redelivery after a lost ack would.
    await pipeline.bus.broker.publish(
        event.model_dump_json().encode(),
        subject=ModelUploaded.SUBJECT,
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
        stream=pipeline.settings.nats.stream,
    )
    validated = pipeline.events(ModelValidated.SUBJECT, name)[0]
    await pipeline.bus.broker.publish(
        json.dumps(validated).encode(),
        subject=ModelValidated.SUBJECT,
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
        stream=pipeline.settings.nats.stream,
    )
    # A later upload is handled after the duplicate (one consumer, in order): once it is
    # analysed, the duplicate has been seen by both services.
    marker = unique_id("marker-")
    await pipeline.upload(marker, to_bytes(tiny_model()))
    await pipeline.wait_for(ModelAnalyzed.SUBJECT, marker)
    assert len(pipeline.events(ModelValidated.SUBJECT, name)) == 2  # ours + the replay
    assert len(pipeline.events(ModelAnalyzed.SUBJECT, name)) == 1
    assert await _count_in_stream(pipeline, ModelAnalyzed.SUBJECT, name) == 1


async def _count_in_stream(pipeline: Pipeline, subject: str, model: str) -> int:
    """Events on ``subject`` for ``model`` stored in the stream (not just seen live)."""
    js = pipeline.bus.js
    sub = await js.pull_subscribe(subject, durable=None, stream=pipeline.settings.nats.stream)
    count = 0
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=1.0)
            except TimeoutError:
                break
            for msg in batch:
                count += json.loads(msg.data)["model"] == model
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return count
