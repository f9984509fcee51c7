"""What a model needs in memory: its stored weights, the peak of live activations, and
how its weights are quantized."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from modelkit.onnx_utils import dtype_bits, dtype_name, graph_inputs, iter_graphs, tensor_numel
from schemas.reports import ParameterStats, QuantizationInfo
from services.analyzer._costs import Shape

__all__ = ["Weights", "find_weights", "parameter_stats", "peak_activation_bytes", "quantization"]

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


#: Operators whose output changes from run to run: runtimes never fold them.
_NONDETERMINISTIC = frozenset(
    "RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli".split()
)

#: (element type, count, bytes) of one stored tensor (a sparse one has two entries).
_Sizes = list[tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class Weights:
    """What a model holds fixed before any input arrives.

    ``fixed`` is every value of the main graph computed from stored tensors only
    (initializers, ``Constant`` nodes, and what deterministic standard operators make of
    them): runtimes fold these when they load the model, so they are neither work per
    inference nor activations. ``used`` are the fixed values that the model's run-time
    operators (or its outputs) consume, in every (sub)graph: what the model would store
    as initializers once its constant subgraphs were folded, i.e. its weights.
    """

    fixed: frozenset[str]
    used: tuple[str, ...]
    stored: dict[str, _Sizes]


def _stored(graph: GraphProto) -> dict[str, _Sizes]:
    sizes: dict[str, _Sizes] = {}
    for t in graph.initializer:
        sizes[t.name] = [(t.data_type, tensor_numel(t.dims), _tensor_bytes(t))]
    for sparse in graph.sparse_initializer:
        sizes[sparse.values.name] = [
            (t.data_type, tensor_numel(t.dims), _tensor_bytes(t))
            for t in (sparse.values, sparse.indices)
        ]
    for node in graph.node:
        if _is_constant(node) and node.output:
            sizes[node.output[0]] = _constant_values(node)
    return sizes


def _is_constant(node: NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def _subgraphs(node: NodeProto) -> list[GraphProto]:
    found = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def _folds(node: NodeProto, fixed: set[str]) -> bool:
    """A standard, deterministic operator whose every input is fixed."""
    inputs = [name for name in node.input if name]
    return (
        bool(inputs)
        and all(name in fixed for name in inputs)
        and node.domain in ("", "ai.onnx")
        and node.op_type not in _NONDETERMINISTIC
        and not _subgraphs(node)
    )


def find_weights(graph: GraphProto) -> Weights:
    """The model's fixed values and its weights (see ``Weights``); one pass per graph,
    since ONNX keeps nodes in topological order."""
    used: dict[str, None] = {}
    stored: dict[str, _Sizes] = {}

    def walk(g: GraphProto, outer: frozenset[str]) -> set[str]:
        stored.update(_stored(g))
        fixed = set(outer)
        fixed.update(t.name for t in g.initializer)
        fixed.update(s.values.name for s in g.sparse_initializer)
        for node in g.node:
            if _is_constant(node) or _folds(node, fixed):
                fixed.update(name for name in node.output if name)
                continue
            used.update((name, None) for name in node.input if name in fixed)
            for sub in _subgraphs(node):
                walk(sub, frozenset(fixed))
        used.update((vi.name, None) for vi in g.output if vi.name in fixed)
        return fixed

    fixed = walk(graph, frozenset())
    return Weights(fixed=frozenset(fixed), used=tuple(used), stored=stored)


def parameter_stats(
    graph: GraphProto,
    weights: Weights,
    shapes: Mapping[str, Shape],
    types: Mapping[str, int],
) -> tuple[tuple[ParameterStats, ...], int]:
    """Count and bytes of the model's weights by element type; also how many computed
    weights are of a size that shape inference could not tell (left out of the count).

    A weight counts wherever it comes from: an initializer (sparse ones with their
    indices), a ``Constant`` node, or a value computed from those (``ConstantOfShape``, a
    ``Cast`` of a stored tensor, ...). Each counts once, however many operators read it;
    stored values that only feed such computations, or nothing, are not weights.
    """
    count: Counter[int] = Counter()
    size: Counter[int] = Counter()
    unknown = 0
    for name in weights.used:
        entries = weights.stored.get(name)
        if entries is None:
            shape, elem = shapes.get(name), types.get(name)
            if shape is None or not elem:
                unknown += 1
                continue
            numel = tensor_numel(shape)
            entries = [(elem, numel, (numel * dtype_bits(elem) + 7) // 8)]
        for elem, n, nbytes in entries:
            count[elem] += n
            size[elem] += nbytes
    for ref in iter_graphs(graph):
        for node in ref.graph.node:
            if node.domain == "ai.onnx.ml":
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
    stats = tuple(
        ParameterStats(dtype=dtype_name(elem), count=count[elem], bytes=size[elem])
        for elem in sorted(count, key=lambda e: (-size[e], dtype_name(e)))
    )
    return stats, unknown


def peak_activation_bytes(
    graph: GraphProto,
    shapes: Mapping[str, Shape],
    types: Mapping[str, int],
    fixed: AbstractSet[str],
) -> tuple[int, int]:
    """Peak of live activations for the graph's node order; also the unknown-size count.

    A tensor lives from the node that makes it (graph inputs: from the start) to its last
    consumer; graph outputs live to the end. Fixed values (weights and what is computed
    from them alone, see ``Weights``) are not activations.
    """
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in fixed:
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
            if name and name not in fixed:
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
