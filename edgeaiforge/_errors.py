"""The SDK's errors: one root, ``EdgeAIForgeError``; API answers map to ``ApiError`` kinds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionFailedError",
    "DownloadIntegrityError",
    "EdgeAIForgeError",
    "InvalidInputError",
    "InvalidRequestError",
    "InvalidTokenError",
    "ModelFileError",
    "ModelRejectedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "UnexpectedResponseError",
    "ValidationTimeoutError",
]


class EdgeAIForgeError(Exception):
    """Root of every error the SDK raises."""


class ConfigurationError(EdgeAIForgeError):
    """The API URL or token is missing or unusable."""

    def __init__(self, what: str, env: str) -> None:
        super().__init__(f"no {what} given: pass it to ModelManager(...) or set {env}")


class InvalidTokenError(ConfigurationError):
    """The API token given is empty or cannot be sent (whitespace or control characters)."""

    def __init__(self, reason: str) -> None:
        EdgeAIForgeError.__init__(
            self,
            f"the API token {reason}: give an API key's token with --token or EAF_API_TOKEN "
            "(ModelManager(token=...) in Python); `edgeaiforge key create` makes one",
        )


class InvalidInputError(EdgeAIForgeError, ValueError):
    """A model name or a metadata value the platform would refuse, caught before sending."""


class ModelFileError(EdgeAIForgeError):
    """The model file to upload is missing or not a regular file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"model file {path}: {reason}")


class ConnectionFailedError(EdgeAIForgeError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"cannot reach the EdgeAIForge API at {url}: {reason}")


class UnexpectedResponseError(EdgeAIForgeError):
    """The API answered success with a body this SDK cannot read (a version mismatch?)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"unexpected answer from {path}: {reason} (is the SDK the API's version?)")


class ApiError(EdgeAIForgeError):
    """The API refused a request; fields from its problem+json answer."""

    def __init__(self, status: int, title: str, detail: str, code: str = "") -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")


class AuthenticationError(ApiError):
    """401: no key, an unknown key or a revoked key (check EAF_API_TOKEN)."""


class PermissionDeniedError(ApiError):
    """403: the key's role may not do this."""


class NotFoundError(ApiError):
    """404: no such model, version, alias or artifact."""


class ConflictError(ApiError):
    """409: the version exists already, or an alias or a device still needs it."""


class InvalidRequestError(ApiError):
    """Another 4xx: a bad name or version, an empty or oversize upload..."""


class ServerError(ApiError):
    """5xx: the platform failed (a damaged artifact, the registry unreachable...)."""


class DownloadIntegrityError(EdgeAIForgeError):
    """A download ended early or its bytes do not match the SHA-256 the server announced."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(
            f"download of {what} failed its integrity check: {reason}; nothing was kept. "
            "If it happens again the stored artifact may be damaged: tell an administrator"
        )


class ModelRejectedError(EdgeAIForgeError):
    """The validator rejected an uploaded version; ``reasons`` are its failed checks.

    The version stays in the repository as ``rejected`` (its number is taken): fix the
    model and upload it under a new version number."""

    def __init__(self, model: str, version: str, reasons: Sequence[str]) -> None:
        self.model = model
        self.version = version
        self.reasons = tuple(reasons)
        why = "; ".join(self.reasons) or "no reason given"
        super().__init__(
            f"{model} {version} was rejected by validation: {why}. Fix the model and upload "
            f"it under a new version number (`edgeaiforge model reports {model} {version}` "
            "shows every check)"
        )


class ValidationTimeoutError(EdgeAIForgeError):
    """An uploaded version had no verdict within the time given; validation goes on."""

    def __init__(
        self, model: str, version: str, status: str, timeout: float, until: str = "validated"
    ) -> None:
        self.model = model
        self.version = version
        self.status = status
        self.timeout = timeout
        waited = "validation" if until == "validated" else "analysis"
        super().__init__(
            f"{model} {version} is stored, but its {waited} did not finish within {timeout:g} s "
            f"(it is {status}); it goes on: look at it later with "
            f"`edgeaiforge model show {model} {version}` "
            f"(ModelManager.get_version({model!r}, {version!r}) in Python)"
        )
