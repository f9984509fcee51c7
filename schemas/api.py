"""Bodies of the REST API (``services/api``) that are not registry replies as they are.

Errors are RFC 9457 problem details (``application/problem+json``).
"""

from __future__ import annotations

from pydantic import Field

from schemas.base import WireModel
from schemas.ids import SemVer
from schemas.registry import ApiRole, MetadataPatch

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


class NewApiKey(WireModel):
    """``POST /api/v1/keys``."""

    name: str = Field(min_length=1, max_length=200)
    role: ApiRole
    #: Days until the key expires; absent: the platform's default (``api.key_lifetime_days``);
    #: 0: it never expires.
    lifetime_days: int | None = Field(default=None, ge=0, le=36_500)


class ApiHealth(WireModel):
    status: str
    registry: str
