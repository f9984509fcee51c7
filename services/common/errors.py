"""Errors that cross service boundaries with a code, an HTTP status and a detail."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "ServiceError",
    "ServiceUnavailable",
    "validation_detail",
]


class ServiceError(Exception):
    """Root of errors a service reports to its caller (over NATS or REST)."""

    code = "error"
    status = 500

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class BadRequest(ServiceError):
    code = "invalid"
    status = 422


class NotFound(ServiceError):
    code = "not_found"
    status = 404


class Conflict(ServiceError):
    code = "conflict"
    status = 409


class Forbidden(ServiceError):
    code = "forbidden"
    status = 403


class ServiceUnavailable(ServiceError):
    code = "unavailable"
    status = 503


_BY_CODE: dict[str, type[ServiceError]] = {
    c.code: c for c in (BadRequest, NotFound, Conflict, Forbidden, ServiceUnavailable)
}


def from_code(code: str, status: int, detail: str) -> ServiceError:
    """Rebuild a ``ServiceError`` on the caller's side of a request."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = ServiceError(detail)
        err.code = code
        err.status = status
        return err
    return cls(detail)


def validation_detail(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors in one line, the first five: ``field.path: message; ...``."""
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
