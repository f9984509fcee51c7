"""What a model needs in memory: its stored weights, the peak of live activations, and
how its weights are quantized."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from modelkit.onnx_utils import dtype_bits, dtype_name, graph_inputs, iter_graphs, tensor_numel
from schemas.reports import ParameterStats, QuantizationInfo
from services.analyzer._costs import Shape

__all__ = ["parameter_stats", "peak_activation_bytes", "quantization"]

_QUANTIZED_OPS = frozenset(
    "QLinearConv QLinearMatMul ConvInteger MatMulInteger QLinearAdd QLinearMul "
    "QLinearAveragePool QLinearGlobalAveragePool QLinearConcat QLinearLeakyRelu "
    "QLinearSigmoid QLinearSoftmax QGemm DynamicQuantizeMatMul MatMulIntegerToFloat "
    "MatMulNBits".split()
)


def _tensor_bytes(t: TensorProto) -> int:
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return (tensor_numel(t.dims) * dtype_bits(t.data_type) + 7) // 8


def _constant_values(node: NodeProto) -> list[tuple[int, int, int]]:
    """(elem_type, count, bytes) of what a Constant node produces."""
    out = []
    for attr in node.attribute:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            out.append((attr.t.data_type, tensor_numel(attr.t.dims), _tensor_bytes(attr.t)))
        elif attr.name == "sparse_value":
            values, indices = attr.sparse_tensor.values, attr.sparse_tensor.indices
            out.append((values.data_type, tensor_numel(values.dims), _tensor_bytes(values)))
            out.append((indices.data_type, tensor_numel(indices.dims), _tensor_bytes(indices)))
        elif attr.name == "value_float":
            out.append((TensorProto.FLOAT, 1, 4))
        elif attr.name == "value_floats":
            out.append((TensorProto.FLOAT, len(attr.floats), 4 * len(attr.floats)))
        elif attr.name == "value_int":
            out.append((TensorProto.INT64, 1, 8))
        elif attr.name == "value_ints":
            out.append((TensorProto.INT64, len(attr.ints), 8 * len(attr.ints)))
        elif attr.name == "value_string":
            out.append((TensorProto.STRING, 1, len(attr.s)))
        elif attr.name == "value_strings":
            out.append((TensorProto.STRING, len(attr.strings), sum(map(len, attr.strings))))
    return out


def parameter_stats(graph: GraphProto) -> tuple[ParameterStats, ...]:
    """Count and bytes of stored weights by element type, in every (sub)graph.

    Initializers, sparse initializers (values and indices) and the values of ``Constant``
    nodes all count: exporters move weights freely between the two forms.
    """
    count: Counter[int] = Counter()
    size: Counter[int] = Counter()
    for ref in iter_graphs(graph):
        g = ref.graph
        tensors = list(g.initializer)
        for sparse in g.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for t in tensors:
            count[t.data_type] += tensor_numel(t.dims)
            size[t.data_type] += _tensor_bytes(t)
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for elem, n, nbytes in _constant_values(node):
                    count[elem] += n
                    size[elem] += nbytes
            elif node.domain == "ai.onnx.ml":
                # Classic ML operators keep their weights (coefficients, tree thresholds,
                # scales) in attributes rather than initializers.
                for attr in node.attribute:
                    if attr.type == AttributeProto.FLOATS:
                        count[TensorProto.FLOAT] += len(attr.floats)
                        size[TensorProto.FLOAT] += 4 * len(attr.floats)
                    elif attr.type == AttributeProto.INTS:
                        count[TensorProto.INT64] += len(attr.ints)
                        size[TensorProto.INT64] += 8 * len(attr.ints)
                    elif attr.type == AttributeProto.TENSOR:
                        count[attr.t.data_type] += tensor_numel(attr.t.dims)
                        size[attr.t.data_type] += _tensor_bytes(attr.t)
    return tuple(
        ParameterStats(dtype=dtype_name(elem), count=count[elem], bytes=size[elem])
        for elem in sorted(count, key=lambda e: (-size[e], dtype_name(e)))
    )


def peak_activation_bytes(
    graph: GraphProto, shapes: Mapping[str, Shape], types: Mapping[str, int]
) -> tuple[int, int]:
    """Peak of live activations for the graph's node order; also the unknown-size count.

    A tensor lives from the node that makes it (graph inputs: from the start) to its last
    consumer; graph outputs live to the end. Weights are not activations.
    """
    weights = {t.name for t in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in weights:
                last_use[name] = index
    end = len(graph.node)
    for vi in graph.output:
        last_use[vi.name] = end
    unknown = 0

    def size(name: str) -> int:
        nonlocal unknown
        shape = shapes.get(name)
        if shape is None:
            unknown += 1
            return 0
        return (tensor_numel(shape) * dtype_bits(types.get(name, TensorProto.FLOAT)) + 7) // 8

    live: dict[str, int] = {vi.name: size(vi.name) for vi in graph_inputs(graph)}
    peak = sum(live.values())
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in weights:
                live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= index]:
            del live[name]
    return peak, unknown


def quantization(graph: GraphProto) -> QuantizationInfo:
    ops: Counter[str] = Counter()
    q = dq = 0
    weight_types: set[str] = set()
    integer = {
        TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4,
        TensorProto.INT16, TensorProto.UINT16,
    }  # fmt: skip
    stored = {}
    for ref in iter_graphs(graph):
        stored.update({t.name: t.data_type for t in ref.graph.initializer})
    for ref in iter_graphs(graph):
        for node in ref.graph.node:
            if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
                q += 1
            elif node.op_type == "DequantizeLinear":
                dq += 1
            elif node.op_type in _QUANTIZED_OPS:
                ops[node.op_type] += 1
            else:
                continue
            for name in node.input:
                if stored.get(name) in integer:
                    weight_types.add(dtype_name(stored[name]))
    scheme = "qoperator" if ops else ("qdq" if dq else "none")
    return QuantizationInfo(
        scheme=scheme,
        quantize_nodes=q,
        dequantize_nodes=dq,
        quantized_operators=dict(sorted(ops.items())),
        weight_dtypes=tuple(sorted(weight_types)),
    )
