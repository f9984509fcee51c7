"""Idempotency keys of "create deployment" and "rollback" (``request_id``).

A caller that timed out does not know whether its request ran; it sends it again with the
same ``request_id`` and gets the deployment the first attempt made instead of a second
one. The key is recorded (``deployer_request_keys``) in the transaction that creates the
deployment, with a fingerprint of the request; its primary key lets only one of two
concurrent attempts commit, the other answers what the winner made. The same key with a
different request is refused (``conflict``). A request that failed records nothing, so
its retry runs again. Keys are forgotten after ``REQUEST_KEY_TTL``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.deployer import DeploymentInfo, KeyedDeploymentInfo
from services.common.errors import Conflict
from services.deployer.store import RequestKey

__all__ = ["REQUEST_KEY_TTL", "Key", "RequestKeyConflict", "claim", "first", "run_once"]

#: How long a key is remembered; a retry after that starts a new deployment.
REQUEST_KEY_TTL = timedelta(hours=24)

_WHAT = {"create": "a create-deployment request", "rollback": "a rollback"}


class RequestKeyConflict(Conflict):
    def __init__(self, request_id: str, operation: str, deployment_id: str) -> None:
        super().__init__(
            f"request_id (Idempotency-Key) {request_id!r} was already used for "
            f"{_WHAT.get(operation, operation)} with different fields (deployment "
            f"{deployment_id}); a retry must repeat its request exactly, a new request "
            "needs a new key"
        )


@dataclass(frozen=True, slots=True)
class Key:
    """A request's idempotency key and the fingerprint of what it asks."""

    request_id: str
    operation: str
    fingerprint: str

    @classmethod
    def of(cls, operation: str, request_id: str | None, fields: Mapping[str, Any]) -> Key | None:
        """The key of a request with ``fields`` (JSON values), or None without a request id."""
        if request_id is None:
            return None
        canonical = json.dumps(
            {"operation": operation, "request": fields}, sort_keys=True, separators=(",", ":")
        )
        return cls(request_id, operation, hashlib.sha256(canonical.encode()).hexdigest())


async def _find(sessions: async_sessionmaker[AsyncSession], key: Key) -> str | None:
    """The deployment made under ``key``; raises ``RequestKeyConflict`` for another request."""
    fresh = RequestKey.created_at >= datetime.now(UTC) - REQUEST_KEY_TTL
    async with sessions() as s:
        row = await s.scalar(
            select(RequestKey).where(RequestKey.request_id == key.request_id, fresh)
        )
    if row is None:
        return None
    if row.operation != key.operation or row.fingerprint != key.fingerprint:
        raise RequestKeyConflict(key.request_id, row.operation, row.deployment_id)
    return row.deployment_id


async def claim(s: AsyncSession, key: Key, deployment_id: str) -> None:
    """Record ``key`` for ``deployment_id`` in the creating transaction ``s``.

    Forgets expired keys first (this one among them, if it has expired); raises
    ``IntegrityError`` when a live row for the key exists, e.g. one a concurrent attempt
    committed.
    """
    now = datetime.now(UTC)
    await s.execute(delete(RequestKey).where(RequestKey.created_at < now - REQUEST_KEY_TTL))
    s.add(
        RequestKey(
            request_id=key.request_id,
            operation=key.operation,
            fingerprint=key.fingerprint,
            deployment_id=deployment_id,
            created_at=now,
        )
    )
    await s.flush()


async def run_once(
    sessions: async_sessionmaker[AsyncSession],
    key: Key,
    create: Callable[[Key], Awaitable[DeploymentInfo]],
    get: Callable[[str], Awaitable[DeploymentInfo]],
) -> KeyedDeploymentInfo:
    """``create(key)`` (which calls ``claim``) unless ``key`` already made a deployment; then,
    or when a concurrent attempt with the key won, that deployment, ``replayed``."""
    known = await _find(sessions, key)
    if known is None:
        try:
            made = await create(key)
        except IntegrityError:
            known = await _find(sessions, key)
            if known is None:
                raise
        else:
            return first(made)
    info = await get(known)
    return KeyedDeploymentInfo.model_validate({**info.model_dump(), "replayed": True})


def first(info: DeploymentInfo) -> KeyedDeploymentInfo:
    """``info`` as the answer to a request seen for the first time (``replayed`` false)."""
    return KeyedDeploymentInfo.model_validate({**info.model_dump(), "replayed": False})
