"""The bus's AsyncAPI document (events and commands): ``GET /asyncapi``.

Public like ``/openapi.json``: it describes the contract, not data.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.asyncapi import asyncapi_document

__all__ = ["router"]

router = APIRouter(tags=["docs"])


@functools.cache
def _document() -> dict[str, Any]:
    # Built once per process: it depends on the code only.
    return asyncapi_document()


@router.get(
    "/asyncapi",
    summary="AsyncAPI 3.0 document of the bus (events and commands)",
    response_class=JSONResponse,
)
async def asyncapi() -> JSONResponse:
    """The events on the stream ``EAF`` and the commands on ``eaf.cmd.>``, as AsyncAPI 3.0;
    the same document as ``docs/asyncapi/asyncapi.json``."""
    return JSONResponse(_document())
