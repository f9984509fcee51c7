"""Replies of request/reply subjects (``eaf.rpc.<service>.<verb>``, ``eaf.cmd.>``).

A successful reply is the verb's own model; a failure is an ``RpcErrorReply``, which the
caller turns back into an exception carrying the same code, HTTP status and detail.
"""

from __future__ import annotations

from schemas._base import WireModel

__all__ = ["Health", "HealthRequest", "RpcError", "RpcErrorReply"]


class RpcError(WireModel):
    #: Stable machine-readable code, e.g. ``not_found``, ``conflict``, ``invalid``.
    code: str
    #: The HTTP status the REST API answers with for this error.
    status: int
    detail: str


class RpcErrorReply(WireModel):
    error: RpcError


class HealthRequest(WireModel):
    pass


class Health(WireModel):
    """Reply of ``eaf.rpc.<service>.health``."""

    service: str
    #: ``ok``, or ``degraded``: the service runs but part of its work cannot be done.
    status: str = "ok"
    instance: str = ""
    #: When degraded: what is broken, why, and what to do about it.
    detail: str = ""
