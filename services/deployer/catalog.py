"""Where the deployer learns what a model version is: the registry, over its RPC.

``Catalog`` is the small interface the deployer needs (resolve ``model@version`` or an
alias to an artifact, a status and the analyzer's device requirements);
``RegistryCatalog`` implements it with ``eaf.rpc.registry.get_version`` and
``get_reports``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from schemas.registry import (
    GetReportsRequest,
    GetVersionRequest,
    RegistryRpc,
)
from schemas.reports import DeviceRequirements
from services.common.bus import Bus
from services.common.errors import BadRequest

__all__ = ["DEPLOYABLE", "Catalog", "RegistryCatalog", "VersionToDeploy"]

#: Statuses of a version that may be deployed.
DEPLOYABLE = frozenset({"validated", "analyzed"})


@dataclass(frozen=True, slots=True)
class VersionToDeploy:
    model: str
    version: str
    artifact_id: str
    size: int
    status: str
    requirements: DeviceRequirements | None = None


class Catalog(Protocol):
    async def resolve(self, model: str, ref: str) -> VersionToDeploy:
        """The version named by ``ref`` (a version or an alias); raises ``NotFound``."""
        ...


class RegistryCatalog:
    """The registry service, asked over the bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def resolve(self, model: str, ref: str) -> VersionToDeploy:
        ref = ref.removeprefix("@")
        try:
            request = GetVersionRequest(model=model, ref=ref)
        except ValidationError:
            # A name the registry cannot hold: the caller's mistake, not an internal error.
            raise BadRequest(
                f"{model!r}@{ref!r} is not a valid model name and version or alias; "
                "use the names the registry lists"
            ) from None
        info = await self.bus.call(RegistryRpc.GET_VERSION, request)
        requirements = None
        reports = await self.bus.call(
            RegistryRpc.GET_REPORTS, GetReportsRequest(model=model, ref=info.version)
        )
        raw = (reports.analysis or {}).get("requirements")
        if raw is not None:
            try:
                requirements = DeviceRequirements.model_validate(raw)
            except ValidationError:
                requirements = None
        return VersionToDeploy(
            model=info.model,
            version=info.version,
            artifact_id=info.artifact_id,
            size=info.size_bytes,
            status=str(info.status),
            requirements=requirements,
        )
