"""Every error as RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.api import PROBLEM_CONTENT_TYPE, Problem
from services.api.errors import RangeNotSatisfiable, Unauthenticated
from services.api.streaming import StreamAborted
from services.common.artifacts import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
)
from services.common.bus import BusError
from services.common.errors import ServiceError, validation_detail
from services.common.logging import get_logger

__all__ = ["install_problem_handlers", "problem_response"]

log = get_logger(__name__)


def problem_response(
    status: int,
    detail: str,
    *,
    code: str = "",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response with the status's standard title."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(title=title, status=status, detail=detail, code=code, instance=instance)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Map every exception the API can meet to problem details; a bug is a 500 problem."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = None
        if exc.status == 401 or isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": 'Bearer realm="edgeaiforge"'}
        if isinstance(exc, RangeNotSatisfiable):
            headers = {"Content-Range": f"bytes */{exc.size}"}
        return problem_response(
            exc.status, exc.detail, code=exc.code, instance=request.url.path, headers=headers
        )

    async def request_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return problem_response(
            422, validation_detail(exc.errors()), code="invalid", instance=request.url.path
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            str(exc.detail),
            code=HTTPStatus(exc.status_code).name.lower(),
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def bus_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("registry unreachable", error=str(exc))
        return problem_response(
            503,
            f"the registry did not answer ({exc}); try again shortly",
            code="unavailable",
            instance=request.url.path,
        )

    async def artifact_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ArtifactNotFoundError):
            return problem_response(404, str(exc), code="not_found", instance=request.url.path)
        if isinstance(exc, ArtifactTooLargeError):
            return problem_response(413, str(exc), code="too_large", instance=request.url.path)
        if isinstance(exc, ArtifactCorruptError):
            log.error("damaged artifact refused", artifact_id=exc.artifact_id, reason=exc.reason)
            return problem_response(
                500, str(exc), code="artifact_corrupt", instance=request.url.path
            )
        log.error("artifact store error", error=str(exc))
        return problem_response(500, str(exc), code="artifact_error", instance=request.url.path)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StreamAborted):
            # Damage found after the headers went out: already logged as what it is; this
            # answer is never sent, the server drops the connection instead.
            return problem_response(500, str(exc), code="artifact_corrupt")
        log.exception("unhandled error", path=request.url.path)
        return problem_response(
            500,
            f"internal error ({type(exc).__name__}); the server log has the details",
            code="internal",
            instance=request.url.path,
        )

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(ValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(BusError, bus_error)
    app.add_exception_handler(ArtifactError, artifact_error)
    app.add_exception_handler(Exception, unexpected)
