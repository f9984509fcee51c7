"""What a user describes: a model file to upload and its metadata."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeaiforge._errors import InvalidInputError, ModelFileError
from schemas.ids import NAME_PATTERN, is_semver
from schemas.registry import VersionMetadata

__all__ = ["Model", "ModelMetadata"]

_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, init=False)
class Model:
    """A named model file on disk: ``Model("my_model", "/path/to/model.onnx")``."""

    name: str
    path: Path

    def __init__(self, name: str, path: str | os.PathLike[str]) -> None:
        if not _NAME.match(name):
            raise InvalidInputError(
                f"model name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, at most 128 characters"
            )
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelFileError(p, "does not exist")
        if not p.is_file():
            raise ModelFileError(p, "is not a regular file")
        if not os.access(p, os.R_OK):
            raise ModelFileError(p, "cannot be read (permissions)")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "path", p.resolve())

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class ModelMetadata:
    """``ModelMetadata("Image Classification", "1.0.0")``, plus optional details."""

    task: str
    version: str
    framework: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    #: Where the model came from (training run, repository, URL): lineage.
    source_url: str = ""
    #: The version this one derives from: lineage.
    parent_version: str | None = None

    def __post_init__(self) -> None:
        if not is_semver(self.version):
            raise InvalidInputError(
                f"version {self.version!r} is not a semantic version "
                "(MAJOR.MINOR.PATCH, e.g. 1.0.0 or 1.1.0-rc.1)"
            )
        if isinstance(self.tags, str):
            raise InvalidInputError("tags must be a sequence of strings, not one string")
        object.__setattr__(self, "tags", tuple(self.tags))

    def to_wire(self) -> VersionMetadata:
        return VersionMetadata(
            task=self.task,
            framework=self.framework,
            description=self.description,
            tags=tuple(self.tags),
            properties=dict(self.properties),
            source_url=self.source_url,
            parent_version=self.parent_version,
        )

    def query(self) -> list[tuple[str, str | int | float | bool | None]]:
        """The upload's query parameters."""
        q: list[tuple[str, str | int | float | bool | None]] = [("task", self.task)]
        for key in ("framework", "description", "source_url"):
            value = getattr(self, key)
            if value:
                q.append((key, value))
        if self.parent_version:
            q.append(("parent_version", self.parent_version))
        q.extend(("tag", t) for t in self.tags)
        q.extend(("property", f"{k}={v}") for k, v in self.properties.items())
        return q
