"""Bodies of the REST API (``services/api``) that are not registry replies as they are.

Errors are RFC 9457 problem details (``application/problem+json``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas._base import WireModel
from schemas.registry import ApiRole, PropertyKey, SemVer, Tag

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "AliasBody",
    "ApiHealth",
    "MetadataPatch",
    "NewApiKey",
    "Problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(WireModel):
    """RFC 9457 problem details. ``code`` is a stable machine-readable name."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    code: str = ""


class AliasBody(WireModel):
    """``PUT /api/v1/models/{model}/aliases/{alias}``: the version the alias points to."""

    version: SemVer


class MetadataPatch(WireModel):
    """``PATCH /api/v1/models/{model}/versions/{version}``: fields left out stay as they are."""

    task: str | None = Field(default=None, max_length=200)
    framework: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=10_000)
    tags: tuple[Tag, ...] | None = Field(default=None, max_length=64)
    properties: dict[PropertyKey, Annotated[str, Field(max_length=2000)]] | None = Field(
        default=None, max_length=128
    )
    source_url: str | None = Field(default=None, max_length=2000)


class NewApiKey(WireModel):
    """``POST /api/v1/keys``."""

    name: str = Field(min_length=1, max_length=200)
    role: ApiRole


class ApiHealth(WireModel):
    status: str
    registry: str
