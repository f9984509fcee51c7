"""The analyzer's work on a model file, run by a sandboxed worker (see
``modelkit.sandbox``): the structural profile. The latency measurement is
``services.analyzer.timing``'s, in a worker of its own.
"""

from __future__ import annotations

from typing import Any

from modelkit.onnx_utils import load_model
from services.analyzer.domain import analyze

__all__ = ["profile"]


def profile(model: str, dim_default: int, dims: dict[str, int], max_nodes: int) -> dict[str, Any]:
    """The analysis report (without latency and diff) as JSON."""
    proto = load_model(model)
    # The protobuf is thrown away afterwards: the weights need not survive shape inference.
    report = analyze(
        proto, dim_default=dim_default, dims=dims, max_nodes=max_nodes, keep_weights=False
    )
    return report.model_dump(mode="json")
