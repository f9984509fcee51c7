"""Large embedded weights moved to a mapped file: same model, same outputs, never a crash."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edge_runtime import _package
from edge_runtime._model import ModelHost
from edge_runtime._package import model_file, unpacked_dir
from edge_runtime.cli import _parser
from edge_runtime.errors import InferenceError
from modelkit.external import ALIGN, WEIGHTS, externalize
from schemas.transfer import ActiveModel

SMALL = {"min_tensor": 1024, "min_total": 0}


def mlp(*, width: int = 96, op: str = "MatMul") -> onnx.ModelProto:
    """y = relu(x @ W1 + b1) @ W2 + b2, with weights of every storage kind.

    W1 and W2 are large ``raw_data``; b1 is small ``raw_data``; b2 is in ``float_data``;
    ``shape`` is an int64 initializer. Metadata and doc strings around them must survive.
    """
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((64, width), dtype=np.float32), "W1")
    w1.doc_string = "first layer"
    w2 = numpy_helper.from_array(rng.standard_normal((width, 32), dtype=np.float32), "W2")
    b1 = numpy_helper.from_array(rng.standard_normal(width, dtype=np.float32), "b1")
    b2 = helper.make_tensor("b2", TensorProto.FLOAT, [32], rng.standard_normal(32).tolist())
    shape = numpy_helper.from_array(np.array([1, 32], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node(op, ["x", "W1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
            helper.make_node("Add", ["h3", "b2"], ["h4"]),
            helper.make_node("Reshape", ["h4", "shape"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [w1, b1, w2, b2, shape],
        doc_string="graph doc",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "test"
    helper.set_model_props(model, {"k": "v"})
    return model


def run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    (y,) = session.run(None, {"x": x})
    return np.asarray(y)


def inlined(model_path: Path) -> bytes:
    """The rewritten model with its external data put back in ``raw_data``."""
    model = onnx.load(str(model_path), load_external_data=False)
    weights = (model_path.parent / WEIGHTS).read_bytes()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            assert info["location"] == WEIGHTS
            offset, length = int(info["offset"]), int(info["length"])
            tensor.raw_data = weights[offset : offset + length]
            del tensor.external_data[:]
            tensor.ClearField("data_location")
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def test_round_trip_same_model_same_outputs(tmp_path: Path) -> None:
    original = tmp_path / "m.onnx"
    original.write_bytes(mlp().SerializeToString())
    rewritten = externalize(original, tmp_path / "out", **SMALL)
    assert rewritten is not None
    onnx.checker.check_model(str(rewritten), full_check=True)

    model = onnx.load(str(rewritten), load_external_data=False)
    moved = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert moved == {"W1", "W2"}  # b1 is too small, b2 has no raw_data, shape is tiny
    for tensor in model.graph.initializer:
        if tensor.name in moved:
            assert not tensor.HasField("raw_data")
            offset = int({e.key: e.value for e in tensor.external_data}["offset"])
            assert offset % ALIGN == 0
    assert rewritten.stat().st_size < 2048  # the graph, not the weights

    parsed = onnx.ModelProto()
    parsed.ParseFromString(original.read_bytes())
    assert inlined(rewritten) == parsed.SerializeToString(deterministic=True)
    np.testing.assert_array_equal(run(rewritten), run(original))


def test_small_models_and_external_ones_are_left_alone(tmp_path: Path) -> None:
    small = tmp_path / "small.onnx"
    small.write_bytes(mlp().SerializeToString())
    assert externalize(small, tmp_path / "a") is None  # defaults: far below the minimum
    assert not (tmp_path / "a").exists()

    src = tmp_path / "ext"
    src.mkdir()
    onnx.save_model(mlp(), str(src / "m.onnx"), save_as_external_data=True, location="w.bin")
    assert externalize(src / "m.onnx", tmp_path / "b", **SMALL) is None


def test_model_file_rewrites_once_and_redoes_a_partial_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_package, "externalize", lambda s, t: externalize(s, t, **SMALL))
    artifact = tmp_path / ("cd" * 32 + ".onnx")
    artifact.write_bytes(mlp().SerializeToString())
    expected = run(artifact)

    loaded = model_file(artifact)
    assert loaded.parent == unpacked_dir(artifact)
    np.testing.assert_array_equal(run(loaded), expected)
    stamp = (loaded.parent / WEIGHTS).stat().st_mtime_ns
    assert model_file(artifact) == loaded
    assert (loaded.parent / WEIGHTS).stat().st_mtime_ns == stamp  # reused

    # A power cut mid-way: no completion mark, a short weights file. It is made again.
    (loaded.parent / ".unpacked").unlink()
    (loaded.parent / WEIGHTS).write_bytes(b"\0" * 10)
    np.testing.assert_array_equal(run(model_file(artifact)), expected)
    assert artifact.read_bytes() == mlp().SerializeToString()  # the artifact is untouched


def test_no_room_for_the_rewrite_loads_the_model_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(source: Path, target: Path) -> Path:
        target.mkdir()
        (target / WEIGHTS).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_package, "externalize", full)
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(mlp().SerializeToString())
    assert model_file(artifact) == artifact
    assert not unpacked_dir(artifact).exists()


def test_host_loads_the_rewrite_and_discards_it_when_the_model_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_package, "externalize", lambda s, t: externalize(s, t, **SMALL))
    info = ActiveModel(model="m", version="1.0.0", sequence=1, artifact_id="ab" * 32)
    good = tmp_path / "good.onnx"
    good.write_bytes(mlp().SerializeToString())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mlp(op="NoSuchOp").SerializeToString())

    async def scenario() -> None:
        host = ModelHost()
        try:
            loaded = await host.prepare(good, info)
            assert unpacked_dir(good).is_dir()
            host.switch(loaded)
            (y,) = (
                await host.infer({"x": np.linspace(-1, 1, 64, dtype=np.float32)[None]})
            ).values()
            # Without prepacking the kernels sum in another order: equal up to rounding.
            np.testing.assert_allclose(y, run(good), rtol=1e-5, atol=1e-4)
            with pytest.raises(InferenceError, match="does not load"):
                await host.prepare(bad, info)
            assert not unpacked_dir(bad).exists()
        finally:
            host.close()

    asyncio.run(scenario())


def _mutations() -> st.SearchStrategy[bytes]:
    # Small weights, so that most edits land in the structure rather than in the floats.
    base = mlp(width=4).SerializeToString()
    flips = st.lists(
        st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ).map(lambda edits: _apply(base, edits))
    cuts = st.integers(0, len(base)).map(lambda n: base[:n])
    return st.one_of(flips, cuts, st.binary(max_size=512))


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at] = value
    return bytes(out)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_mutations())
def test_malformed_input_is_loaded_as_it_is_or_rewritten_faithfully(
    tmp_path: Path, data: bytes
) -> None:
    source = tmp_path / "fuzz.onnx"
    source.write_bytes(data)
    target = tmp_path / "fuzz.pkg"
    shutil.rmtree(target, ignore_errors=True)
    rewritten = externalize(source, target, min_tensor=256, min_total=0)  # never raises
    if rewritten is None:
        return
    original = onnx.ModelProto()
    try:
        original.ParseFromString(data)
    except Exception:  # the protobuf refuses it; onnxruntime would too
        return
    assert inlined(rewritten) == original.SerializeToString(deterministic=True)


def chain(nodes: int) -> onnx.ModelProto:
    """Many small fields (a long Identity chain) after a large initializer."""
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "W")
    names = ["h0", *(f"h{i}" for i in range(1, nodes + 1))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h0"])]
        + [helper.make_node("Identity", [a], [b]) for a, b in itertools.pairwise(names)],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_many_fields_round_trip_and_a_bound_on_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tmp_path / "chain.onnx"
    original.write_bytes(chain(6000).SerializeToString())
    assert original.stat().st_size > 2 * 64 * 1024  # headers span several read windows
    rewritten = externalize(original, tmp_path / "out", **SMALL)
    assert rewritten is not None
    onnx.checker.check_model(str(rewritten))
    parsed = onnx.ModelProto()
    parsed.ParseFromString(original.read_bytes())
    assert inlined(rewritten) == parsed.SerializeToString(deterministic=True)

    monkeypatch.setattr("modelkit.external._MAX_FIELDS", 1000)
    assert externalize(original, tmp_path / "capped", **SMALL) is None


@pytest.mark.parametrize("prepack", [False, True])
def test_prepacking_of_mapped_weights_follows_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepack: bool
) -> None:
    monkeypatch.setattr(_package, "externalize", lambda s, t: externalize(s, t, **SMALL))
    info = ActiveModel(model="m", version="1.0.0", sequence=1, artifact_id="ab" * 32)
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(mlp().SerializeToString())
    # What `edge-runtime run --prepack-weights` hands to the runtime's ModelHost.
    args = _parser().parse_args(
        ["run", "--state-dir", str(tmp_path), *(["--prepack-weights"] if prepack else [])]
    )
    assert args.prepack_weights is prepack

    async def scenario() -> ort.SessionOptions:
        host = ModelHost(prepack=args.prepack_weights)
        try:
            loaded = await host.prepare(artifact, info)
            return loaded.session.get_session_options()
        finally:
            host.close()

    options = asyncio.run(scenario())
    assert model_file(artifact) != artifact  # the weights are mapped from the rewrite
    try:
        disabled = options.get_session_config_entry("session.disable_prepacking") == "1"
    except RuntimeError:  # never set
        disabled = False
    assert disabled is not prepack


def test_the_walker_imports_without_the_runtime_and_public_names_stay_functions() -> None:
    # The analyzer's latency worker imports modelkit.external: it must not pull in
    # onnxruntime, MQTT and crypto with it; and the device's package names resolve.
    code = (
        "import sys, modelkit.external\n"
        "heavy = {'onnxruntime', 'aiomqtt', 'cryptography', 'pydantic'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "import edge_runtime._enroll\n"
        "from edge_runtime import EdgeRuntime, StateDir, enroll, TransferRefused\n"
        "assert callable(enroll) and enroll.__module__ == 'edge_runtime._enroll', enroll\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
