"""Small helpers over ONNX protobufs shared by the validator's checks and the analyzer.

Nothing here loads external data or runs a model: ``load_model`` parses a model file (in
a sandboxed worker), the rest walk a ``ModelProto`` that has already been parsed.
"""

from __future__ import annotations

import importlib
import math
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from schemas.reports import normalize_domain

__all__ = [
    "GraphRef",
    "concrete_input_dims",
    "dtype_bits",
    "dtype_name",
    "graph_inputs",
    "iter_graphs",
    "iter_tensors",
    "load_model",
    "op_key",
    "stored_bytes",
    "tensor_numel",
    "type_string",
]

#: What ``onnx.load`` raises for a file that does not parse (protobuf has no type stubs).
_DecodeError: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError
_NAMES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}


def dtype_name(elem_type: int) -> str:
    """``float32``, ``int8``, ``bfloat16``...: a numpy-like name for an ONNX element type."""
    if elem_type in _NAMES:
        return _NAMES[elem_type]
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"unknown({elem_type})"


def dtype_bits(elem_type: int) -> int:
    """Bits per element (0 for strings and unknown types, whose size is not fixed)."""
    name = dtype_name(elem_type)
    if name.startswith("float8"):
        return 8
    if name in ("int4", "uint4", "float4e2m1"):
        return 4
    if name == "bool":
        return 8
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits and name not in ("string",) else 0


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """``onnx.load(path, load_external_data=False)`` for a binary model file, parsed from a
    memory map of the file rather than from a copy of it read into memory."""
    proto = onnx.ModelProto()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            proto.ParseFromString(b"")
            return proto
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view, memoryview(view) as data:
            decoded = proto.ParseFromString(data)
    if decoded is not None and decoded != size:
        raise _DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {size}")
    return proto


def stored_bytes(tensor: TensorProto) -> int:
    """Bytes a stored tensor's values take by its dims and element type (0 for strings),
    without reading them."""
    return (tensor_numel(tensor.dims) * dtype_bits(tensor.data_type) + 7) // 8


def tensor_numel(dims: Iterator[int] | list[int] | tuple[int, ...]) -> int:
    """Element count of a tensor of ``dims`` (a scalar has one element)."""
    return math.prod(int(d) for d in dims)


def op_key(node: NodeProto) -> str:
    """``"domain::OpType"`` with the default domain spelled ``ai.onnx``."""
    return f"{normalize_domain(node.domain)}::{node.op_type}"


def type_string(tp: onnx.TypeProto) -> str:
    """A readable type: ``float32`` for tensors, ``seq(map(int64,float32))`` otherwise."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        inner = getattr(tp, kind)
        name = dtype_name(inner.elem_type)
        return name if kind == "tensor_type" else f"sparse({name})"
    if kind == "sequence_type":
        return f"seq({type_string(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(tp.map_type.key_type)},{type_string(tp.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    return "unknown"


@dataclass(frozen=True, slots=True)
class GraphRef:
    """A graph and how deep it is nested (the main graph is depth 0)."""

    graph: GraphProto
    depth: int


def iter_graphs(graph: GraphProto, depth: int = 0) -> Iterator[GraphRef]:
    """The graph and every subgraph (If/Loop/Scan bodies...), depth first."""
    yield GraphRef(graph, depth)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from iter_graphs(attr.g, depth + 1)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub, depth + 1)


def iter_tensors(graph: GraphProto) -> Iterator[tuple[str, TensorProto]]:
    """Every stored tensor: initializers, sparse initializers, Constant values, in subgraphs.

    Yields ``(where, tensor)``; ``where`` says which it is, for messages.
    """
    for ref in iter_graphs(graph):
        g = ref.graph
        for t in g.initializer:
            yield f"initializer {t.name!r}", t
        for s in g.sparse_initializer:
            yield f"sparse initializer {s.values.name!r}", s.values
            yield f"sparse initializer {s.values.name!r} indices", s.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    yield f"attribute {attr.name!r} of node {node.name!r}", attr.t
                elif attr.type == AttributeProto.TENSORS:
                    for t in attr.tensors:
                        yield f"attribute {attr.name!r} of node {node.name!r}", t
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    yield (
                        f"attribute {attr.name!r} of node {node.name!r}",
                        attr.sparse_tensor.values,
                    )


def graph_inputs(graph: GraphProto) -> list[onnx.ValueInfoProto]:
    """Inputs a caller feeds: graph inputs that are not also initializers (IR < 4 style)."""
    stored = {t.name for t in graph.initializer}
    return [vi for vi in graph.input if vi.name not in stored]


def concrete_input_dims(
    model: onnx.ModelProto, *, default: int, named: Mapping[str, int]
) -> dict[str, int]:
    """Fix every dynamic input dimension in place; returns the symbol -> value assumed."""
    assumed: dict[str, int] = {}
    for vi in graph_inputs(model.graph):
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            symbol = dim.dim_param or "?"
            value = int(named.get(symbol, default))
            assumed[symbol] = value
            dim.dim_value = value
    return assumed
