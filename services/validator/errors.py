"""Errors of the validator service (the sandbox's own are ``modelkit.errors``)."""

from __future__ import annotations

__all__ = ["ArtifactUnavailableError", "ValidatorError"]


class ValidatorError(Exception):
    """Root of the validator's errors."""


class ArtifactUnavailableError(ValidatorError):
    """An artifact named by an event cannot be read (yet); the event will be retried."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"artifact {artifact_id} cannot be read: {reason}")
