"""Real ONNX models for tests, built in memory with onnx.helper and skl2onnx.

Every builder returns an ``onnx.ModelProto``; ``to_bytes`` serialises it. The healthy
models pass ``onnx.checker.check_model(full_check=True)`` and run on onnxruntime's CPU
provider; the hostile ones are each broken in exactly one way.

    from tests.support.models import cnn_model, tiny_model, to_bytes
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "cnn_model",
    "custom_domain_model",
    "external_data_model",
    "hanging_loop_model",
    "huge_tensor_model",
    "large_model",
    "single_conv_model",
    "single_gemm_model",
    "sklearn_pipeline_model",
    "tiny_model",
    "to_bytes",
    "transformer_block_model",
]

#: The default-domain opset of the hand-built models (onnxruntime 1.32 runs it).
OPSET = 17
IR_VERSION = 8


def to_bytes(model: onnx.ModelProto) -> bytes:
    """The model's protobuf bytes (weights embedded)."""
    data: bytes = model.SerializeToString()
    return data


def _model(graph: onnx.GraphProto, *, opset: int = OPSET, **extra: int) -> onnx.ModelProto:
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(domain, version) for domain, version in extra.items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="model_zoo")
    model.ir_version = IR_VERSION
    return model


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def tiny_model() -> onnx.ModelProto:
    """A few hundred bytes: ``y = relu(x + b)``, input float32[1,4], output float32[1,4]."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "b"], ["s"], name="add"),
            helper.make_node("Relu", ["s"], ["y"], name="relu"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [_init("b", np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32))],
    )
    return _model(graph)


def single_conv_model(
    *, n: int = 1, c_in: int = 3, c_out: int = 8, hw: int = 32, k: int = 3, bias: bool = True
) -> onnx.ModelProto:
    """One Conv, no padding, stride 1: output [n, c_out, hw-k+1, hw-k+1]."""
    rng = np.random.default_rng(0)
    out = hw - k + 1
    inits = [_init("W", rng.standard_normal((c_out, c_in, k, k)).astype(np.float32))]
    inputs = ["x", "W"]
    if bias:
        inits.append(_init("B", rng.standard_normal(c_out).astype(np.float32)))
        inputs.append("B")
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["y"], name="conv", kernel_shape=[k, k])],
        "single_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c_in, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c_out, out, out])],
        inits,
    )
    return _model(graph)


def single_gemm_model(*, m: int = 4, k: int = 64, n: int = 10) -> onnx.ModelProto:
    """One Gemm ``y = x @ W^T + C``: x [m, k], W [n, k] (transB), C [n]."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="gemm", transB=1)],
        "single_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [
            _init("W", rng.standard_normal((n, k)).astype(np.float32)),
            _init("C", rng.standard_normal(n).astype(np.float32)),
        ],
    )
    return _model(graph)


def cnn_model(*, classes: int = 10) -> onnx.ModelProto:
    """A small CNN: conv-bn-relu-maxpool, conv-bn-relu, global pool, flatten, gemm.

    Input ``image`` float32[batch, 3, 32, 32] (``batch`` dynamic), output ``logits``.
    """
    rng = np.random.default_rng(2)

    def f32(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def bn(prefix: str, c: int) -> list[TensorProto]:
        return [
            _init(f"{prefix}_scale", np.ones(c, np.float32)),
            _init(f"{prefix}_bias", np.zeros(c, np.float32)),
            _init(f"{prefix}_mean", np.zeros(c, np.float32)),
            _init(f"{prefix}_var", np.ones(c, np.float32)),
        ]

    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization",
                         ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["b1"],
                         name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2_w", "c2_b"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization",
                         ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["b2"],
                         name="bn2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]  # fmt: skip
    inits = [
        _init("c1_w", f32(16, 3, 3, 3)),
        _init("c1_b", f32(16)),
        *bn("bn1", 16),
        _init("c2_w", f32(32, 16, 3, 3)),
        _init("c2_b", f32(32)),
        *bn("bn2", 32),
        _init("fc_w", f32(classes, 32)),
        _init("fc_b", f32(classes)),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _model(graph)


def transformer_block_model(
    *, d_model: int = 32, heads: int = 4, d_ff: int = 64
) -> onnx.ModelProto:
    """A pre-norm transformer encoder block: self-attention and a feed-forward layer.

    Input ``x`` float32[batch, seq, d_model] (both leading dimensions dynamic). The
    attention is spelled out as MatMul chains (Q·Kᵀ, softmax, ·V), as exporters do.
    """
    rng = np.random.default_rng(3)
    dh = d_model // heads

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def i64(*values: int) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    mk = helper.make_node
    nodes = [
        mk("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], name="ln1", axis=-1),
        mk("MatMul", ["h", "wq"], ["q0"], name="q_proj"),
        mk("MatMul", ["h", "wk"], ["k0"], name="k_proj"),
        mk("MatMul", ["h", "wv"], ["v0"], name="v_proj"),
        mk("Reshape", ["q0", "heads_shape"], ["q1"], name="q_split"),
        mk("Reshape", ["k0", "heads_shape"], ["k1"], name="k_split"),
        mk("Reshape", ["v0", "heads_shape"], ["v1"], name="v_split"),
        mk("Transpose", ["q1"], ["q"], name="q_t", perm=[0, 2, 1, 3]),
        mk("Transpose", ["k1"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
        mk("Transpose", ["v1"], ["v"], name="v_t", perm=[0, 2, 1, 3]),
        mk("MatMul", ["q", "kt"], ["scores0"], name="qk"),
        mk("Div", ["scores0", "scale"], ["scores"], name="scale"),
        mk("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
        mk("MatMul", ["attn", "v"], ["ctx0"], name="av"),
        mk("Transpose", ["ctx0"], ["ctx1"], name="ctx_t", perm=[0, 2, 1, 3]),
        mk("Reshape", ["ctx1", "model_shape"], ["ctx"], name="ctx_merge"),
        mk("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        mk("Add", ["x", "o"], ["r1"], name="residual1"),
        mk("LayerNormalization", ["r1", "ln2_g", "ln2_b"], ["h2"], name="ln2", axis=-1),
        mk("MatMul", ["h2", "w1"], ["f0"], name="ff1"),
        mk("Add", ["f0", "b1"], ["f1"], name="ff1_bias"),
        mk("Relu", ["f1"], ["f2"], name="ff_relu"),
        mk("MatMul", ["f2", "w2"], ["f3"], name="ff2"),
        mk("Add", ["f3", "b2"], ["f4"], name="ff2_bias"),
        mk("Add", ["r1", "f4"], ["y"], name="residual2"),
    ]
    inits = [
        _init("ln1_g", np.ones(d_model, np.float32)),
        _init("ln1_b", np.zeros(d_model, np.float32)),
        _init("ln2_g", np.ones(d_model, np.float32)),
        _init("ln2_b", np.zeros(d_model, np.float32)),
        _init("wq", w(d_model, d_model)),
        _init("wk", w(d_model, d_model)),
        _init("wv", w(d_model, d_model)),
        _init("wo", w(d_model, d_model)),
        _init("w1", w(d_model, d_ff)),
        _init("b1", w(d_ff)),
        _init("w2", w(d_ff, d_model)),
        _init("b2", w(d_model)),
        _init("heads_shape", i64(0, -1, heads, dh)),
        _init("model_shape", i64(0, -1, d_model)),
        _init("scale", np.array(np.sqrt(dh), dtype=np.float32)),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d_model])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d_model])],
        inits,
    )
    return _model(graph)


def sklearn_pipeline_model() -> onnx.ModelProto:
    """StandardScaler + LogisticRegression on the iris data, converted with skl2onnx.

    Uses the ``ai.onnx.ml`` domain (Scaler, LinearClassifier...). Input ``features``
    float32[batch, 4]; outputs ``label`` int64[batch] and ``probabilities``.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(x.astype(np.float32), y)
    model = to_onnx(
        pipeline,
        initial_types=[("features", FloatTensorType([None, 4]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={"zipmap": False},
    )
    return model  # type: ignore[no-any-return]


def large_model(size_mb: float) -> onnx.ModelProto:
    """A valid model with about ``size_mb`` MiB of float32 weights: ``y = x @ W``.

    Input ``x`` float32[1, 256]; ``W`` is [256, n]. Built quickly (no random numbers).
    """
    rows = 256
    cols = max(1, int(size_mb * 1024 * 1024 / (4 * rows)))
    weights = (np.arange(rows * cols, dtype=np.float32) % 251 / 251.0).reshape(rows, cols)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [_init("W", weights)],
    )
    return _model(graph)


# ---- hostile and broken models -------------------------------------------------------


def external_data_model(location: str, *, length: int | None = None) -> onnx.ModelProto:
    """``tiny_model`` whose bias lives in an external file at ``location``."""
    model = tiny_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0"}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value
    return model


def custom_domain_model(domain: str = "com.evil") -> onnx.ModelProto:
    """A node of an operator in a custom domain that no policy allows by default."""
    graph = helper.make_graph(
        [helper.make_node("Exfiltrate", ["x"], ["y"], name="custom", domain=domain)],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return _model(graph, **{domain: 1})


def huge_tensor_model(elements: int = 10**12) -> onnx.ModelProto:
    """An initializer that declares ``elements`` elements (and carries no data)."""
    side = round(elements**0.5)
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[side, elements // side])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, elements // side])],
        [tensor],
    )
    return _model(graph)


def hanging_loop_model(trip_count: int = 2**62) -> onnx.ModelProto:
    """A Loop that runs ``trip_count`` times: its inference does not finish in our time."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"], name="step"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
        [_init("one", np.ones((1, 4), np.float32) * 1e-6)],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], name="loop", body=body)],
        "hanging",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            _init("trips", np.array(trip_count, dtype=np.int64)),
            _init("cond", np.array(True)),
        ],
    )
    return _model(graph)
