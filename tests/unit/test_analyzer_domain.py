"""The analyzer's arithmetic: MACs and parameters equal hand-computed numbers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.analyzer.domain import analyze, diff_reports
from tests.support.models import (
    cnn_model,
    single_conv_model,
    single_gemm_model,
    tiny_model,
    transformer_block_model,
)


def test_single_conv_macs_equal_the_hand_computed_number() -> None:
    # 1x3x32x32 input, 8 filters of 3x3x3, no padding: 8 x 30 x 30 outputs,
    # each 3*3*3 = 27 multiply-accumulates.
    report = analyze(single_conv_model(n=1, c_in=3, c_out=8, hw=32, k=3))
    assert report.macs == 8 * 30 * 30 * 27 == 194_400
    # Two FLOPs per MAC, plus one add per output for the bias.
    assert report.flops == 2 * 194_400 + 8 * 30 * 30
    assert report.nodes[0].op == "ai.onnx::Conv" and report.nodes[0].macs == 194_400


def test_single_conv_without_bias_and_with_batch() -> None:
    report = analyze(single_conv_model(n=2, c_in=4, c_out=6, hw=10, k=5, bias=False))
    assert report.macs == 2 * 6 * 6 * 6 * (4 * 5 * 5)
    assert report.flops == 2 * report.macs


def test_single_gemm_macs_equal_the_hand_computed_number() -> None:
    # [4 x 64] @ [64 x 10]: 4 * 10 outputs, 64 MACs each; plus the bias C.
    report = analyze(single_gemm_model(m=4, k=64, n=10))
    assert report.macs == 4 * 10 * 64 == 2560
    assert report.flops == 2 * 2560 + 4 * 10


def test_parameters_equal_the_sum_of_weight_sizes() -> None:
    model = cnn_model(classes=10)
    report = analyze(model)
    expected = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert report.parameter_count == expected
    assert report.parameter_bytes == 4 * expected
    assert [p.dtype for p in report.parameters] == ["float32"]
    # conv1 16*3*3*3+16, bn1 4*16, conv2 32*16*3*3+32, bn2 4*32, fc 10*32+10
    assert expected == 448 + 64 + 4640 + 128 + 330


def test_constant_nodes_count_as_weights() -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weights)),
            helper.make_node("Constant", [], ["shape"], value_ints=[4, 2]),
            helper.make_node("Constant", [], ["unused"], value_ints=[1, 2, 3]),
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Reshape", ["xw", "shape"], ["y"]),
        ],
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
    )
    report = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    by_dtype = {p.dtype: (p.count, p.bytes) for p in report.parameters}
    # What the operators read counts; a constant that nothing reads does not.
    assert by_dtype == {"float32": (12, 48), "int64": (2, 16)}
    assert report.macs == 2 * 4 * 3  # the Constant's shape is known to the MatMul


def _weights_computed_at_run_time(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float weight made at run time from its shape, as some exporters
    write them: ``ConstantOfShape(Constant(dims))`` times a scalar ``Constant``."""
    computed = onnx.ModelProto()
    computed.CopyFrom(model)
    g = computed.graph
    makers: list[onnx.NodeProto] = []
    kept = []
    for t in g.initializer:
        if t.data_type != TensorProto.FLOAT:
            kept.append(t)
            continue
        n = t.name
        makers += [
            helper.make_node("Constant", [], [f"{n}.dims"], value_ints=list(t.dims)),
            helper.make_node(
                "ConstantOfShape",
                [f"{n}.dims"],
                [f"{n}.ones"],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("Constant", [], [f"{n}.scale"], value_float=0.01),
            helper.make_node("Mul", [f"{n}.ones", f"{n}.scale"], [n]),
        ]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = makers + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return computed


def test_weights_computed_at_run_time_count_as_the_folded_model_does() -> None:
    folded = cnn_model(classes=10)
    computed = _weights_computed_at_run_time(folded)
    assert not any(t.data_type == TensorProto.FLOAT for t in computed.graph.initializer)
    a, b = analyze(folded), analyze(computed)
    assert b.parameter_count == a.parameter_count == 448 + 64 + 4640 + 128 + 330
    assert b.parameters == a.parameters
    # The weights are not activations, and making them is no work per inference.
    assert b.peak_activation_bytes == a.peak_activation_bytes
    assert b.macs == a.macs and b.flops == a.flops
    assert b.warnings == a.warnings


def test_a_weight_cast_from_half_precision_counts_once_as_what_the_operator_reads() -> None:
    w16 = numpy_helper.from_array(np.ones((8, 4), dtype=np.float16), "w16")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("MatMul", ["y", "w_t"], ["z"]),
            helper.make_node("Transpose", ["w"], ["w_t"]),
        ],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
        initializer=[w16],
    )
    graph.node.insert(2, graph.node.pop(3))  # Transpose before the MatMul that reads it
    report = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    # Folded, the model stores w and its transpose (32 floats each), not the float16 source.
    assert {p.dtype: p.count for p in report.parameters} == {"float32": 64}
    assert report.macs == 8 * 4 + 4 * 8


def test_attention_matmul_chain_is_costed_from_inferred_shapes() -> None:
    report = analyze(transformer_block_model(d_model=32, heads=4), dims={"batch": 2, "seq": 8})
    by_name = {n.name: n for n in report.nodes}
    # Q·Kᵀ: [2,4,8,8] outputs of 8-long dot products; attn·V: [2,4,8,8] of 8-long ones.
    assert by_name["qk"].macs == 2 * 4 * 8 * 8 * 8
    assert by_name["av"].macs == 2 * 4 * 8 * 8 * 8
    assert by_name["q_proj"].macs == 2 * 8 * 32 * 32
    assert by_name["ff1"].macs == 2 * 8 * 32 * 64
    assert report.assumed_dimensions == {"batch": 2, "seq": 8}
    assert report.inputs[0].shape == ("batch", "seq", 32)
    assert report.inputs[0].dynamic_axes == (0, 1)
    assert report.warnings == ()


def test_requirements_normalise_the_default_domain() -> None:
    model = tiny_model()
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    report = analyze(model)
    assert report.requirements.opsets == {"ai.onnx": 17, "ai.onnx.ml": 3}
    assert report.requirements.operators == ("ai.onnx::Add", "ai.onnx::Relu")
    assert report.requirements.ir_version == model.ir_version


def test_peak_activation_memory_follows_liveness() -> None:
    # x[1,4] -> s[1,4] -> y[1,4]: at most two 16-byte tensors are alive at once.
    assert analyze(tiny_model()).peak_activation_bytes == 32


def _qdq_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"]),
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("MatMul", ["xd", "w"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w, scale, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantization_is_detected() -> None:
    assert analyze(cnn_model()).quantization.scheme == "none"
    q = analyze(_qdq_model()).quantization
    assert q.scheme == "qdq" and q.quantized
    assert (q.quantize_nodes, q.dequantize_nodes) == (1, 2)
    assert q.weight_dtypes == ("int8",)


def test_diff_of_identical_versions_is_compatible() -> None:
    before, after = analyze(cnn_model()), analyze(cnn_model())
    diff = diff_reports("1.0.0", before, after)
    assert diff.signature_compatible and diff.signature_changes == ()
    assert diff.parameters_before == diff.parameters_after


def test_diff_reports_signature_breaks_and_operator_changes() -> None:
    before, after = analyze(cnn_model(classes=10)), analyze(transformer_block_model())
    diff = diff_reports("1.0.0", before, after)
    assert not diff.signature_compatible
    assert "input 'image' was removed" in diff.signature_changes
    assert "ai.onnx::Softmax" in diff.operators_added
    assert "ai.onnx::Conv" in diff.operators_removed
