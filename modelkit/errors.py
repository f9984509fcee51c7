"""Errors of the sandbox, shared by the services that run it."""

from __future__ import annotations

__all__ = ["ModelkitError", "SandboxUnavailableError"]


class ModelkitError(Exception):
    """Root of modelkit's errors."""


class SandboxUnavailableError(ModelkitError):
    """Workers cannot be confined as the configuration demands; the service will not start."""

    def __init__(self, reason: str, *, section: str) -> None:
        self.reason = reason
        self.section = section
        super().__init__(
            f"the sandbox cannot isolate workers from the network ({reason}); run the service "
            "as root or where unprivileged user namespaces are allowed, or set "
            f"{section}.require_network_isolation = false to accept models without it"
        )
