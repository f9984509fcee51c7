"""MACs and FLOPs per operator, from the shapes that shape inference finds.

The counting conventions are written down in ``docs/analysis.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, NodeProto, TensorProto

from modelkit.onnx_utils import stored_bytes, tensor_numel

__all__ = ["Cost", "Shape", "node_cost", "shape_map"]

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


def shape_map(
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
