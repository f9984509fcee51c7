"""Errors of the edge runtime: one root, each message says what was wrong and what to do."""

from __future__ import annotations

from pathlib import Path

from schemas.transfer import RejectionCode

__all__ = [
    "EdgeRuntimeError",
    "EnrollmentError",
    "InferenceError",
    "NoModelError",
    "NotEnrolledError",
    "TransferRefused",
]


class EdgeRuntimeError(Exception):
    """Root of the edge runtime's errors."""


class NotEnrolledError(EdgeRuntimeError):
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        super().__init__(
            f"{state_dir} holds no enrolled device: run `edge-runtime enroll --api URL "
            f"--token TOKEN --device-id ID --state-dir {state_dir}` first"
        )


class EnrollmentError(EdgeRuntimeError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"enrolment failed: {reason}")


class TransferRefused(EdgeRuntimeError):
    """A manifest or chunk the device will not accept; reported on the state topic."""

    def __init__(self, code: RejectionCode, detail: str, *, deployment_id: str = "") -> None:
        self.code = code
        self.detail = detail
        self.deployment_id = deployment_id
        super().__init__(f"refused ({code.value}): {detail}")


class NoModelError(EdgeRuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "no model is active on this device yet: deploy one with `edgeaiforge deploy`"
        )


class InferenceError(EdgeRuntimeError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"inference failed: {reason}")
