"""The identifiers every contract shares, declared once.

Each is an ``Annotated`` string type: pydantic checks it in a model field, and FastAPI
checks it as a path or query parameter (``Annotated[DeviceId, Path(...)]``), so the REST
API, the bus and the MQTT topics refuse the same bad ids with the same rule.
"""

from __future__ import annotations

import re
from typing import Annotated

import semver
from pydantic import AfterValidator, Field

__all__ = [
    "ALIAS_PATTERN",
    "ARTIFACT_ID_PATTERN",
    "ARTIFACT_ID_RE",
    "DEPLOYMENT_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "DEVICE_ID_RE",
    "NAME_PATTERN",
    "AliasName",
    "DeploymentId",
    "DeviceId",
    "ModelName",
    "SemVer",
    "Sha256Hex",
    "VersionRef",
    "is_semver",
]

#: Model names: no slashes, no leading dot, nothing a path or a subject could trip on.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = NAME_PATTERN
#: A device id is an MQTT topic level and a broker username: no ``/``, ``+`` or ``#``.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: Artifacts are named by the SHA-256 of their plaintext, in lowercase hex.
ARTIFACT_ID_PATTERN = r"^[0-9a-f]{64}$"
DEPLOYMENT_ID_PATTERN = r"^[0-9a-f-]{36}$"
_VERSION_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,127}$"

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
ARTIFACT_ID_RE = re.compile(ARTIFACT_ID_PATTERN)


def is_semver(value: str) -> bool:
    """True when ``value`` is a semantic version such as ``1.2.0`` or ``2.0.0-rc.1``."""
    return semver.Version.is_valid(value)


def _check_semver(value: str) -> str:
    if not is_semver(value):
        raise ValueError(
            f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0 or 1.1.0-rc.1)"
        )
    return value


def _check_alias(value: str) -> str:
    # An alias that looked like a version would make "get 1.0.0" ambiguous.
    if is_semver(value):
        raise ValueError(
            f"alias {value!r} looks like a version; choose a name such as 'production'"
        )
    return value


ModelName = Annotated[str, Field(pattern=NAME_PATTERN, examples=["resnet50"])]
AliasName = Annotated[
    str, Field(pattern=ALIAS_PATTERN, examples=["production"]), AfterValidator(_check_alias)
]
SemVer = Annotated[str, Field(max_length=128, examples=["1.0.0"]), AfterValidator(_check_semver)]
#: A version or an alias: what "get" and "download" accept.
VersionRef = Annotated[str, Field(pattern=_VERSION_REF_PATTERN, examples=["1.0.0", "production"])]
Sha256Hex = Annotated[str, Field(pattern=ARTIFACT_ID_PATTERN)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, examples=["cam-17"])]
DeploymentId = Annotated[str, Field(pattern=DEPLOYMENT_ID_PATTERN)]
