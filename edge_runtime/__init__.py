"""The device agent: enrolment, secure transfer, activation and rollback, local inference.

Depends on ``schemas`` only. ``EdgeRuntime`` runs one device; ``edge-runtime`` is its
command (``enroll``, ``run``, ``status``). Metrics hook: pass ``recorder=`` (called after
every inference) and publish batches with ``EdgeRuntime.publish_metrics``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_runtime._enroll import capabilities, complete, enroll, prepare
    from edge_runtime._model import InferenceRecorder, ModelHost, sample_inputs
    from edge_runtime._runtime import RUNTIME_VERSION, EdgeRuntime
    from edge_runtime._state import Connection, ConnectionState, StateDir
    from edge_runtime.errors import (
        EdgeRuntimeError,
        EnrollmentError,
        InferenceError,
        NoModelError,
        NotEnrolledError,
        TransferRefused,
    )

#: Where each public name lives. Imported on first use, so that a submodule such as
#: ``edge_runtime._external`` (which the analyzer's latency worker uses) comes without
#: onnxruntime, MQTT and crypto being imported with it.
_HOMES = {
    "InferenceRecorder": "_model",
    "ModelHost": "_model",
    "sample_inputs": "_model",
    "RUNTIME_VERSION": "_runtime",
    "EdgeRuntime": "_runtime",
    "StateDir": "_state",
    "Connection": "_state",
    "ConnectionState": "_state",
    "capabilities": "_enroll",
    "complete": "_enroll",
    "enroll": "_enroll",
    "prepare": "_enroll",
    "EdgeRuntimeError": "errors",
    "EnrollmentError": "errors",
    "InferenceError": "errors",
    "NoModelError": "errors",
    "NotEnrolledError": "errors",
    "TransferRefused": "errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edge_runtime.{home}"), name)


__all__ = [
    "RUNTIME_VERSION",
    "Connection",
    "ConnectionState",
    "EdgeRuntime",
    "EdgeRuntimeError",
    "EnrollmentError",
    "InferenceError",
    "InferenceRecorder",
    "ModelHost",
    "NoModelError",
    "NotEnrolledError",
    "StateDir",
    "TransferRefused",
    "capabilities",
    "complete",
    "enroll",
    "prepare",
    "sample_inputs",
]
