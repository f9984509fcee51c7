"""Errors the API raises itself (the registry's arrive as ``ServiceError``)."""

from __future__ import annotations

from services.common.errors import ServiceError

__all__ = [
    "ApiError",
    "EmptyBody",
    "PayloadTooLarge",
    "RangeNotSatisfiable",
    "Unauthenticated",
    "UnsupportedMediaType",
]


class ApiError(ServiceError):
    """Root of the API's own errors; each becomes a problem+json answer with its status."""


class Unauthenticated(ApiError):
    code = "unauthorized"
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; send 'Authorization: Bearer <API key>'")


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"
    status = 415

    def __init__(self, got: str, want: str) -> None:
        super().__init__(f"the body is {got!r}; send the model file as raw bytes with {want!r}")


class EmptyBody(ApiError):
    code = "empty_body"
    status = 422

    def __init__(self) -> None:
        super().__init__("the request body is empty; send the model file's bytes")


class PayloadTooLarge(ApiError):
    code = "too_large"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the upload is larger than the limit of {limit} bytes "
            "(model_repository.max_upload_bytes)"
        )


class RangeNotSatisfiable(ApiError):
    code = "range_not_satisfiable"
    status = 416

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"the requested range is outside the artifact's {size} bytes")
