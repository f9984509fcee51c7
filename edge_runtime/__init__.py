"""The device agent: enrolment, secure transfer, activation and rollback, local inference.

Depends on ``schemas`` and ``modelkit`` only. ``EdgeRuntime`` runs one device;
``edge-runtime`` is its command (``enroll``, ``run``, ``status``). Metrics hook: pass
``recorder=`` (called after every inference) and publish batches with
``EdgeRuntime.publish_metrics``.
"""

from __future__ import annotations

from edge_runtime._enroll import capabilities, complete, enroll, prepare
from edge_runtime._model import InferenceRecorder, ModelHost, sample_inputs
from edge_runtime._reporting import RUNTIME_VERSION
from edge_runtime._runtime import EdgeRuntime
from edge_runtime._state import Connection, ConnectionState, StateDir
from edge_runtime.errors import (
    EdgeRuntimeError,
    EnrollmentError,
    InferenceError,
    NoModelError,
    NotEnrolledError,
    TransferRefused,
)

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
