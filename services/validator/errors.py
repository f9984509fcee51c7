"""Errors of the validator and the analyzer services."""

from __future__ import annotations

__all__ = ["ArtifactUnavailableError", "SandboxUnavailableError", "ValidatorError"]


class ValidatorError(Exception):
    """Root of the validator's (and the analyzer's) errors."""


class SandboxUnavailableError(ValidatorError):
    """Workers cannot be confined as the configuration demands; the service will not start."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the sandbox cannot isolate workers from the network ({reason}); run the service "
            "as root or where unprivileged user namespaces are allowed, or set "
            "validator.require_network_isolation = false to accept models without it"
        )


class ArtifactUnavailableError(ValidatorError):
    """An artifact named by an event cannot be read (yet); the event will be retried."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"artifact {artifact_id} cannot be read: {reason}")
