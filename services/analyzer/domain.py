"""The analysis of a model, as pure functions over a parsed ``ModelProto``.

Everything here is deterministic and does no I/O; the sandboxed worker
(``services.analyzer.tasks``) calls ``analyze`` and adds the latency it measures, and the
service adds the diff against the previous version (``diff_reports``). The counting
conventions are written down in ``docs/analysis.md``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from modelkit.onnx_utils import (
    concrete_input_dims,
    dtype_bits,
    dtype_name,
    graph_inputs,
    iter_graphs,
    op_key,
    stored_bytes,
    tensor_numel,
    type_string,
)
from schemas.reports import (
    AnalysisReport,
    DeviceRequirements,
    NodeCost,
    OperatorCost,
    ParameterStats,
    QuantizationInfo,
    TensorSignature,
    VersionDiff,
    normalize_domain,
)

__all__ = [
    "Shape",
    "analyze",
    "diff_reports",
    "latency_warning",
    "node_cost",
    "parameter_stats",
]

#: A fully known shape, or None when inference could not tell.
Shape = tuple[int, ...] | None

#: Operators that do one floating-point operation per output element.
_ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Mod Max Min Sum Mean Neg Abs Reciprocal Sqrt Exp Log Erf Sin Cos "
    "Tan Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Tanh Softplus "
    "Softsign Mish ThresholdedRelu Clip Floor Ceil Round Sign Equal Less Greater LessOrEqual "
    "GreaterOrEqual Where Not And Or Xor IsNaN IsInf".split()
)
_REDUCE = frozenset(
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin".split()
)
#: Per-element cost of the normalisations with an affine step (see docs/analysis.md).
_NORM_FLOPS = 7
_SOFTMAX_FLOPS = 3
_QUANTIZED_OPS = frozenset(
    "QLinearConv QLinearMatMul ConvInteger MatMulInteger QLinearAdd QLinearMul "
    "QLinearAveragePool QLinearGlobalAveragePool QLinearConcat QLinearLeakyRelu "
    "QLinearSigmoid QLinearSoftmax QGemm DynamicQuantizeMatMul MatMulIntegerToFloat "
    "MatMulNBits".split()
)


# ---- parameters ----------------------------------------------------------------------


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


# ---- signature and shapes -------------------------------------------------------------


def _signature(vi: onnx.ValueInfoProto) -> TensorSignature:
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return TensorSignature(name=vi.name, dtype=type_string(vi.type), shape=None)
    shape: list[int | str | None] = []
    dynamic: list[int] = []
    for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or None)
            dynamic.append(axis)
    return TensorSignature(
        name=vi.name, dtype=type_string(vi.type), shape=tuple(shape), dynamic_axes=tuple(dynamic)
    )


def _shape_map(
    model: onnx.ModelProto, *, keep_weights: bool = True
) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes and element types of the main graph's values after shape inference.

    Large weights are detached while inference runs so that the model is not copied with
    them; inference needs their dims only. With ``keep_weights=False`` they are not put
    back (nor copied out first): the caller has no further use for them.
    """
    detached: list[tuple[TensorProto, bytes]] = []
    for t in model.graph.initializer:
        if t.HasField("raw_data") and stored_bytes(t) > 65536:
            if keep_weights:
                detached.append((t, t.raw_data))
            t.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort here; the validator has already run it
        inferred = model
    finally:
        for t, raw in detached:
            t.raw_data = raw
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        tt = vi.type.tensor_type
        types.setdefault(vi.name, tt.elem_type)
        if not tt.HasField("shape"):
            shapes.setdefault(vi.name, None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        shapes.setdefault(vi.name, None if any(d < 0 for d in dims) else tuple(dims))
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
                    types[node.output[0]] = attr.t.data_type
    return shapes, types


# ---- costs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    macs: int
    flops: int
    #: False when a shape the formula needs is unknown (the cost is then 0).
    known: bool = True


_UNKNOWN = Cost(0, 0, known=False)
_FREE = Cost(0, 0)


def _numel(shape: Shape) -> int:
    return tensor_numel(shape) if shape is not None else 0


def _attr_ints(node: NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return []


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def node_cost(node: NodeProto, shape: Callable[[str], Shape]) -> Cost:
    """MACs and FLOPs of one node, from the shapes of its inputs and outputs.

    One multiply-accumulate is two FLOPs; a bias adds one FLOP per output element;
    elementwise operators cost one FLOP per output element (see docs/analysis.md).
    """
    op = node.op_type
    ins = list(node.input)
    out = shape(node.output[0]) if node.output else None

    def inp(i: int) -> Shape:
        return shape(ins[i]) if i < len(ins) and ins[i] else None

    def has(i: int) -> bool:
        return i < len(ins) and bool(ins[i])

    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = inp(3 if op == "QLinearConv" else 1)
        if out is None or w is None:
            return _UNKNOWN
        macs = _numel(out) * tensor_numel(w[1:])
        bias = has(8) if op == "QLinearConv" else (op == "Conv" and has(2))
        return Cost(macs, 2 * macs + (_numel(out) if bias else 0))
    if op == "ConvTranspose":
        x, w = inp(0), inp(1)
        if x is None or w is None or out is None:
            return _UNKNOWN
        macs = _numel(x) * tensor_numel(w[1:])
        return Cost(macs, 2 * macs + (_numel(out) if has(2) else 0))
    if op == "Gemm":
        a = inp(0)
        if a is None or out is None or len(a) != 2:
            return _UNKNOWN
        k = a[0] if _attr_int(node, "transA", 0) else a[1]
        macs = _numel(out) * k
        return Cost(macs, 2 * macs + (_numel(out) if has(2) else 0))
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = inp(0)
        if a is None or out is None or not a:
            return _UNKNOWN
        macs = _numel(out) * a[-1]
        return Cost(macs, 2 * macs)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        if out is None:
            return _UNKNOWN
        return Cost(0, _numel(out) * tensor_numel(_attr_ints(node, "kernel_shape")))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        x = inp(0)
        return _UNKNOWN if x is None else Cost(0, _numel(x))
    if op == "BatchNormalization":
        # At inference it folds to one multiply-add per element.
        return _UNKNOWN if out is None else Cost(_numel(out), 2 * _numel(out))
    if op in ("LayerNormalization", "InstanceNormalization", "GroupNormalization"):
        x = inp(0)
        return _UNKNOWN if x is None else Cost(0, _NORM_FLOPS * _numel(x))
    if op in ("Softmax", "LogSoftmax"):
        return _UNKNOWN if out is None else Cost(0, _SOFTMAX_FLOPS * _numel(out))
    if op in _ELEMENTWISE:
        return _UNKNOWN if out is None else Cost(0, _numel(out))
    if op in _REDUCE:
        x = inp(0)
        return _UNKNOWN if x is None else Cost(0, _numel(x))
    return _FREE


# ---- memory, quantization, requirements ---------------------------------------------


def _peak_activation_bytes(
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


def _quantization(graph: GraphProto) -> QuantizationInfo:
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


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    imports: dict[str, int] = {}
    for opset in model.opset_import:
        domain = normalize_domain(opset.domain)
        imports[domain] = max(imports.get(domain, 0), int(opset.version))
    return dict(sorted(imports.items()))


# ---- the report ----------------------------------------------------------------------


def analyze(
    model: onnx.ModelProto,
    *,
    dim_default: int = 1,
    dims: Mapping[str, int] | None = None,
    max_nodes: int = 500,
    keep_weights: bool = True,
) -> AnalysisReport:
    """Profile ``model`` (modified in place: dynamic input dims are fixed to values; with
    ``keep_weights=False`` the data of large initializers is dropped, which saves copying it).

    Latency and the diff are left empty: the worker measures the one, the service adds
    the other.
    """
    g = model.graph
    inputs = tuple(_signature(vi) for vi in graph_inputs(g))
    outputs = tuple(_signature(vi) for vi in g.output)
    params = parameter_stats(g)

    histogram: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ref in iter_graphs(g):
        for node in ref.graph.node:
            histogram[op_key(node)][0] += 1

    assumed = concrete_input_dims(model, default=dim_default, named=dims or {})
    shapes, types = _shape_map(model, keep_weights=keep_weights)
    costs: list[NodeCost] = []
    unknown_nodes = 0
    for index, node in enumerate(g.node):
        cost = node_cost(node, lambda name: shapes.get(name))
        if not cost.known:
            unknown_nodes += 1
        key = op_key(node)
        histogram[key][1] += cost.macs
        histogram[key][2] += cost.flops
        costs.append(
            NodeCost(name=node.name or f"#{index}", op=key, macs=cost.macs, flops=cost.flops)
        )
    kept: Sequence[NodeCost] = costs
    if len(costs) > max_nodes:
        # Keep the costliest, in graph order.
        top = sorted(range(len(costs)), key=lambda i: -costs[i].flops)[:max_nodes]
        kept = [costs[i] for i in sorted(top)]
    peak, unknown_tensors = _peak_activation_bytes(g, shapes, types)

    warnings = []
    if unknown_nodes:
        warnings.append(
            f"{unknown_nodes} node(s) have shapes that inference could not determine; "
            "their cost is counted as 0"
        )
    if unknown_tensors:
        warnings.append(
            f"{unknown_tensors} activation(s) of unknown size are left out of the peak memory"
        )
    sub_nodes = sum(len(r.graph.node) for r in iter_graphs(g) if r.depth > 0)
    if sub_nodes:
        warnings.append(
            f"{sub_nodes} node(s) inside If/Loop/Scan bodies are not costed "
            "(their iteration count is known only at run time)"
        )
    operators = tuple(sorted(histogram))
    return AnalysisReport(
        ir_version=int(model.ir_version),
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        opset_imports=_opsets(model),
        node_count=sum(len(r.graph.node) for r in iter_graphs(g)),
        operators={
            k: OperatorCost(count=v[0], macs=v[1], flops=v[2]) for k, v in sorted(histogram.items())
        },
        parameters=params,
        parameter_count=sum(p.count for p in params),
        parameter_bytes=sum(p.bytes for p in params),
        macs=sum(c.macs for c in costs),
        flops=sum(c.flops for c in costs),
        nodes=tuple(kept),
        nodes_truncated=len(kept) < len(costs),
        inputs=inputs,
        outputs=outputs,
        assumed_dimensions=assumed,
        quantization=_quantization(g),
        peak_activation_bytes=peak,
        requirements=DeviceRequirements(
            opsets=_opsets(model), operators=operators, ir_version=int(model.ir_version)
        ),
        warnings=tuple(warnings),
    )


# ---- diff ----------------------------------------------------------------------------


def _signature_changes(
    before: Sequence[TensorSignature], after: Sequence[TensorSignature], what: str
) -> list[str]:
    changes = []
    now = {s.name: s for s in after}
    for old in before:
        new = now.get(old.name)
        if new is None:
            changes.append(f"{what} {old.name!r} was removed")
            continue
        if new.dtype != old.dtype:
            changes.append(f"{what} {old.name!r} changed type {old.dtype} -> {new.dtype}")
            continue
        if old.shape is None or new.shape is None:
            continue
        if len(old.shape) != len(new.shape):
            changes.append(f"{what} {old.name!r} changed rank {len(old.shape)} -> {len(new.shape)}")
            continue
        for axis, (a, b) in enumerate(zip(old.shape, new.shape, strict=True)):
            # A fixed dimension may become dynamic; any other change breaks callers.
            if isinstance(a, int) and isinstance(b, int) and a != b:
                changes.append(f"{what} {old.name!r} axis {axis} changed {a} -> {b}")
            elif not isinstance(a, int) and isinstance(b, int):
                changes.append(f"{what} {old.name!r} axis {axis} is now fixed at {b}")
    return changes


def diff_reports(
    previous_version: str, before: AnalysisReport, after: AnalysisReport
) -> VersionDiff:
    """How ``after`` differs from ``before``, the analysis of ``previous_version``.

    The signature stays compatible when every old input and output is still there with
    the same type and rank, and no fixed dimension changed (it may become dynamic);
    a new input is a break too, since old callers do not feed it.
    """
    changes = _signature_changes(before.inputs, after.inputs, "input")
    changes += _signature_changes(before.outputs, after.outputs, "output")
    old_inputs = {s.name for s in before.inputs}
    changes += [f"input {s.name!r} was added" for s in after.inputs if s.name not in old_inputs]
    ops_before, ops_after = set(before.requirements.operators), set(after.requirements.operators)
    p50_before = before.latency.p50_ms if before.latency else None
    p50_after = after.latency.p50_ms if after.latency else None
    change = (
        (p50_after - p50_before) / p50_before
        if p50_before and p50_after is not None and p50_before > 0
        else None
    )
    return VersionDiff(
        previous_version=previous_version,
        signature_compatible=not changes,
        signature_changes=tuple(changes),
        operators_added=tuple(sorted(ops_after - ops_before)),
        operators_removed=tuple(sorted(ops_before - ops_after)),
        parameters_before=before.parameter_count,
        parameters_after=after.parameter_count,
        parameter_bytes_before=before.parameter_bytes,
        parameter_bytes_after=after.parameter_bytes,
        macs_before=before.macs,
        macs_after=after.macs,
        latency_p50_ms_before=p50_before,
        latency_p50_ms_after=p50_after,
        latency_change=change,
    )


def latency_warning(reason: str, *, platform_fault: bool) -> str:
    """The report's warning when the latency could not be measured: ``reason`` is the
    sandbox's account of the worker; a fault of the platform (``reason`` then says so)
    is never worded as the model's."""
    if platform_fault:
        return f"latency not measured: {reason}"
    return f"latency not measured: the model {reason}"
