"""Reports that the validator and the analyzer attach to their events.

``ValidationReport`` lists every check run on an upload. ``AnalysisReport`` is the
analyzer's profile of a validated model: what it costs (parameters, MACs/FLOPs, memory,
latency), what it looks like (signature, operators, quantization), what a device needs to
run it (``requirements``, read by the deployer's preflight) and how it differs from the
version before it. See ``docs/validation.md`` and ``docs/analysis.md``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.base import WireModel

__all__ = [
    "DEFAULT_DOMAIN",
    "AnalysisReport",
    "CheckOutcome",
    "CheckResult",
    "DeviceRequirements",
    "LatencyStats",
    "NodeCost",
    "OperatorCost",
    "ParameterStats",
    "QuantizationInfo",
    "TensorSignature",
    "ValidationReport",
    "VersionDiff",
    "normalize_domain",
]

#: The name the reports use for ONNX's default operator domain (``""`` in a model file).
DEFAULT_DOMAIN = "ai.onnx"


def normalize_domain(domain: str) -> str:
    """``""`` and ``"ai.onnx"`` are the same domain; reports always say ``"ai.onnx"``."""
    return DEFAULT_DOMAIN if domain in ("", DEFAULT_DOMAIN) else domain


class CheckOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class CheckResult(WireModel):
    """One validation check: its name, its outcome and a message a user can act on."""

    name: str
    outcome: CheckOutcome
    message: str = ""
    duration_ms: float | None = None


class ValidationReport(WireModel):
    """Every check run on one artifact, in order."""

    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(c.outcome is not CheckOutcome.FAILED for c in self.checks)

    @property
    def first_failure(self) -> CheckResult | None:
        """The check that rejected the model, if any."""
        return next((c for c in self.checks if c.outcome is CheckOutcome.FAILED), None)


# ---- analysis ------------------------------------------------------------------------


class ParameterStats(WireModel):
    """Weights of one element type: initializers and ``Constant`` node values together."""

    dtype: str
    count: int
    bytes: int


class TensorSignature(WireModel):
    """One graph input or output.

    ``shape`` holds an int for a fixed dimension, the symbol's name for a named dynamic
    dimension and ``None`` for an unnamed one; ``dynamic_axes`` lists the positions of the
    dynamic ones. ``shape`` is ``None`` when the rank itself is unknown.
    """

    name: str
    #: Element type (``float32``, ``int64``...) or the container type (``seq(map(...))``).
    dtype: str
    shape: tuple[int | str | None, ...] | None
    dynamic_axes: tuple[int, ...] = ()


class NodeCost(WireModel):
    """Estimated arithmetic of one node (with dynamic dimensions at their defaults)."""

    name: str
    op: str  # "domain::OpType"
    macs: int
    flops: int


class OperatorCost(WireModel):
    """Node count and arithmetic of one operator type, summed over the graph."""

    count: int
    macs: int = 0
    flops: int = 0


class QuantizationInfo(WireModel):
    """Whether (and how) the model is quantized."""

    #: ``qdq``: QuantizeLinear/DequantizeLinear pairs around float operators;
    #: ``qoperator``: QLinear*/integer operators (with or without Q/DQ at the edges);
    #: ``none``: a float model.
    scheme: Literal["none", "qdq", "qoperator"]
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    #: QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, DynamicQuantizeLinear...
    quantized_operators: dict[str, int] = Field(default_factory=dict)
    #: Element types of the integer weights (``int8``, ``uint8``, ``int4``...).
    weight_dtypes: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.scheme != "none"


class LatencyStats(WireModel):
    """Latency of one inference on onnxruntime's CPU provider, after warm-up."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup_runs: int
    threads: int
    #: Whether onnxruntime prepacked the weights: not for a model whose large weights
    #: devices memory-map, which they run without prepacking by default.
    prepacked: bool | None = None


class DeviceRequirements(WireModel):
    """What a device's runtime must support to run the model (the deployer's preflight).

    ``opsets`` maps each operator domain the model imports to the opset version it
    imports, which is the minimum a runtime must implement; the default domain is always
    spelled ``"ai.onnx"`` (never ``""``). ``operators`` lists every operator used, in
    subgraphs too, as ``"domain::OpType"`` with the same domain spelling, sorted.
    """

    opsets: dict[str, int]
    operators: tuple[str, ...]
    ir_version: int


class VersionDiff(WireModel):
    """How this version differs from the version uploaded before it."""

    previous_version: str
    #: Every input and output of the previous version is still there, with the same
    #: element type and rank, and fixed dimensions unchanged or made dynamic.
    signature_compatible: bool
    signature_changes: tuple[str, ...] = ()
    operators_added: tuple[str, ...] = ()
    operators_removed: tuple[str, ...] = ()
    parameters_before: int
    parameters_after: int
    parameter_bytes_before: int
    parameter_bytes_after: int
    macs_before: int
    macs_after: int
    latency_p50_ms_before: float | None = None
    latency_p50_ms_after: float | None = None
    #: Relative p50 change, ``(after - before) / before``; None without both numbers.
    latency_change: float | None = None


class AnalysisReport(WireModel):
    """The analyzer's profile of one model version."""

    ir_version: int
    producer: str = ""
    #: Opset imported per domain, as written in the model (domain spelling normalised).
    opset_imports: dict[str, int]
    node_count: int
    #: Operator histogram: ``"domain::OpType"`` -> count and summed cost.
    operators: dict[str, OperatorCost]
    parameters: tuple[ParameterStats, ...]
    parameter_count: int
    parameter_bytes: int
    macs: int
    flops: int
    #: The costliest nodes, in graph order; all of them unless ``nodes_truncated``.
    nodes: tuple[NodeCost, ...]
    nodes_truncated: bool = False
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    #: Values used for dynamic dimensions in the estimates (symbol -> value).
    assumed_dimensions: dict[str, int] = Field(default_factory=dict)
    quantization: QuantizationInfo
    #: Largest sum of live activation tensors in a sequential run (bytes, an estimate).
    peak_activation_bytes: int
    latency: LatencyStats | None = None
    requirements: DeviceRequirements
    diff: VersionDiff | None = None
    #: What the estimates could not cover (unknown shapes, unmeasured latency...).
    warnings: tuple[str, ...] = ()
