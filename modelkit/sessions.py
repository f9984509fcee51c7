"""onnxruntime sessions as the sandboxed workers create them.

Imports onnxruntime only (no onnx, no pydantic), so that a worker that runs a model is
ready soon.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

__all__ = ["new_session"]


def new_session(model: str, threads: int = 1, *, prepack: bool = False) -> Any:
    """A sequential CPU session. Pre-packing rewrites every MatMul/Conv/Gemm weight into
    the layout its kernel prefers, which pays off over many runs; validation runs the
    model once or twice (for a 100 MB MatMul it is a third of the session's creation
    time), so it is off unless asked for (the analyzer's latency run, as devices do)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
