"""The analyzer's work on a model file, run by a sandboxed worker (see
``services.validator.sandbox``): the structural profile. The latency measurement is
``services.analyzer.timing``'s, in a worker of its own; ``measure_latency`` runs it here.
"""

from __future__ import annotations

from typing import Any

from services.analyzer.domain import analyze
from services.validator.onnx_utils import load_model

__all__ = ["measure_latency", "profile"]


def profile(model: str, dim_default: int, dims: dict[str, int], max_nodes: int) -> dict[str, Any]:
    """The analysis report (without latency and diff) as JSON."""
    proto = load_model(model)
    # The protobuf is thrown away afterwards: the weights need not survive shape inference.
    report = analyze(
        proto, dim_default=dim_default, dims=dims, max_nodes=max_nodes, keep_weights=False
    )
    return report.model_dump(mode="json")


def measure_latency(
    model: str, threads: int, warmup_runs: int, runs: int, dim_default: int, dims: dict[str, int]
) -> dict[str, Any]:
    """p50/p95 of ``runs`` inferences on onnxruntime CPU after ``warmup_runs`` (both steps
    of ``services.analyzer.timing.time_model`` at once)."""
    from services.analyzer.timing import time_model

    steps = time_model(model, threads, warmup_runs, runs, dim_default, dims)
    next(steps)
    return next(steps)
