"""The registry's errors. They travel over NATS as ``ServiceError`` code, status and detail."""

from __future__ import annotations

from services.common.errors import BadRequest, Conflict, NotFound, ServiceError

__all__ = [
    "AliasInUse",
    "AliasOnRejected",
    "ApiKeyExpired",
    "ApiKeyNotFound",
    "ArtifactMissing",
    "ModelNotFound",
    "RegistryError",
    "Unauthorized",
    "VersionExists",
    "VersionNotFound",
]


class RegistryError(ServiceError):
    """Root of the registry's own errors (each also a standard ``ServiceError`` kind)."""


class ModelNotFound(RegistryError, NotFound):
    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"model {model!r} does not exist; list models with GET /api/v1/models")


class VersionNotFound(RegistryError, NotFound):
    def __init__(self, model: str, ref: str) -> None:
        self.model = model
        self.ref = ref
        super().__init__(
            f"model {model!r} has no version or alias {ref!r}; "
            f"list its versions with GET /api/v1/models/{model}/versions"
        )


class VersionExists(RegistryError, Conflict):
    def __init__(self, model: str, version: str) -> None:
        super().__init__(
            f"model {model!r} already has version {version}; versions are immutable, "
            "upload under a new version number"
        )


class AliasInUse(RegistryError, Conflict):
    def __init__(self, model: str, version: str, aliases: list[str]) -> None:
        names = ", ".join(sorted(aliases))
        super().__init__(
            f"version {version} of {model!r} is the target of alias(es) {names}; "
            "move or remove them first"
        )


class AliasOnRejected(RegistryError, Conflict):
    """An alias may not name a version the validator rejected: what it names gets deployed."""

    def __init__(self, model: str, version: str, alias: str, reason: str) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(
            f"alias {alias!r} cannot name version {version} of {model!r}: the version is "
            f"rejected{because}; point the alias at a version that passed validation"
        )


class ArtifactMissing(RegistryError, BadRequest):
    def __init__(self, artifact_id: str, reason: str) -> None:
        super().__init__(f"artifact {artifact_id} cannot be registered: {reason}; upload again")


class ApiKeyNotFound(RegistryError, NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"there is no API key {key_id!r}; list keys with GET /api/v1/keys")


class Unauthorized(RegistryError):
    """A bearer token that is unknown, malformed or revoked."""

    code = "unauthorized"
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; send 'Authorization: Bearer <API key>' with a valid key")


class ApiKeyExpired(Unauthorized):
    """A known key past its expiry: 401 with its own code, so clients can tell."""

    code = "api_key_expired"

    def __init__(self, key_id: str, expired_at: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"API key {key_id} expired at {expired_at}; an admin makes a new one with "
            "`edgeaiforge key create`"
        )
