"""The analysis of a model, as pure functions over a parsed ``ModelProto``.

Everything here is deterministic and does no I/O; the sandboxed worker
(``services.analyzer.tasks``) calls ``analyze`` and adds the latency it measures, and the
service adds the diff against the version uploaded before it (``previous_analysis`` picks
it, ``diff_reports`` compares). The cost of each operator is counted in ``_costs``,
weights, activations and quantization in ``_memory``; the counting conventions are
written down in ``docs/analysis.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

import onnx
import semver

from modelkit.onnx_utils import concrete_input_dims, graph_inputs, iter_graphs, op_key, type_string
from schemas.reports import (
    AnalysisReport,
    DeviceRequirements,
    NodeCost,
    OperatorCost,
    TensorSignature,
    VersionDiff,
    normalize_domain,
)
from services.analyzer._costs import Cost, node_cost, shape_map
from services.analyzer._memory import (
    find_weights,
    parameter_stats,
    peak_activation_bytes,
    quantization,
)

__all__ = ["Analysed", "analyze", "diff_reports", "latency_warning", "previous_analysis"]


# ---- signature -----------------------------------------------------------------------


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
    weights = find_weights(g)

    histogram: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ref in iter_graphs(g):
        for node in ref.graph.node:
            histogram[op_key(node)][0] += 1

    assumed = concrete_input_dims(model, default=dim_default, named=dims or {})
    shapes, types = shape_map(model, keep_weights=keep_weights)
    params, unknown_weights = parameter_stats(g, weights, shapes, types)
    costs: list[NodeCost] = []
    unknown_nodes = 0
    for index, node in enumerate(g.node):
        if all(name in weights.fixed for name in node.output if name):
            # Computed from weights alone: runtimes fold it when they load the model.
            cost = Cost(0, 0)
        else:
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
    peak, unknown_tensors = peak_activation_bytes(g, shapes, types, weights.fixed)

    warnings = []
    if unknown_nodes:
        warnings.append(
            f"{unknown_nodes} node(s) have shapes that inference could not determine; "
            "their cost is counted as 0"
        )
    if unknown_weights:
        warnings.append(
            f"{unknown_weights} weight(s) computed from constants have a size that inference "
            "could not determine; they are left out of the parameter count"
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
        quantization=quantization(g),
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


class Analysed(Protocol):
    """What ``previous_analysis`` reads of a stored analysis."""

    @property
    def version(self) -> str: ...

    @property
    def sequence(self) -> int | None: ...


_A = TypeVar("_A", bound=Analysed)


def _semver(value: str) -> semver.Version | None:
    try:
        return semver.Version.parse(value)
    except (ValueError, TypeError):
        return None


def _by_semver(analysed: Sequence[_A], version: str) -> _A | None:
    """The rule from before analyses carried the upload order: the highest semantic version
    below ``version``; for a version that is not one, the last analysed."""
    current = _semver(version)
    if current is None:
        return analysed[-1] if analysed else None
    older = [(parsed, a) for a in analysed if (parsed := _semver(a.version)) is not None]
    older = [(parsed, a) for parsed, a in older if parsed < current]
    return max(older, key=lambda item: item[0])[1] if older else None


def previous_analysis(analysed: Sequence[_A], *, version: str, sequence: int | None) -> _A | None:
    """The analysis to diff ``version`` (uploaded as ``sequence``) against: the version
    uploaded just before it, i.e. the greatest ``sequence`` below its own.

    ``analysed`` holds the model's analyses in the order they were made. Analyses made
    before they carried a sequence (``None``) are weighed only when no later-uploaded one
    qualifies, by the older rule: highest semantic version below, else the last analysed.
    A ``version`` without a sequence (an event from before validated events carried it)
    is placed by that rule among all analyses.
    """
    others = [a for a in analysed if a.version != version]
    if sequence is not None:
        earlier = [(a.sequence, a) for a in others if a.sequence is not None]
        earlier = [(seq, a) for seq, a in earlier if seq < sequence]
        if earlier:
            return max(earlier, key=lambda item: item[0])[1]
        others = [a for a in others if a.sequence is None]
    return _by_semver(others, version)


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
