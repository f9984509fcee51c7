"""Request/reply subjects (``eaf.rpc.<service>.<verb>``, ``eaf.cmd.>``) and their replies.

Each subject is declared once, as an ``Rpc``: the subject, the request type and the reply
type together. Services serve it and callers call it only through that declaration, so a
caller cannot expect another reply than the one served. A successful reply is the verb's
own model; a failure is an ``RpcErrorReply``, which the caller turns back into an exception
carrying the same code, HTTP status and detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from schemas.base import WireModel

__all__ = ["Health", "HealthRequest", "Rpc", "RpcError", "RpcErrorReply", "health_rpc"]

Req = TypeVar("Req", bound=BaseModel)
#: Covariant: an Rpc answering a subclass is an Rpc answering its base class.
Resp = TypeVar("Resp", bound=BaseModel, covariant=True)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Resp]):
    """One request/reply subject: what it takes, what it answers, who answers it."""

    subject: str
    request: type[Req]
    reply: type[Resp]
    #: The service that answers (its instances share the subject in a queue group).
    service: str
    summary: str = ""

    @classmethod
    def of(
        cls, service: str, verb: str, request: type[Req], reply: type[Resp], summary: str = ""
    ) -> Rpc[Req, Resp]:
        """``eaf.rpc.<service>.<verb>``."""
        return cls(f"eaf.rpc.{service}.{verb}", request, reply, service, summary)


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


def health_rpc(service: str) -> Rpc[HealthRequest, Health]:
    """``eaf.rpc.<service>.health``, which every service answers."""
    return Rpc.of(service, "health", HealthRequest, Health, "Whether the service works")
