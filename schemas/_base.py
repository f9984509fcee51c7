"""Base classes shared by every wire model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["WireModel"]


class WireModel(BaseModel):
    """A frozen message that refuses unknown fields: what goes on a wire is exact."""

    model_config = ConfigDict(frozen=True, extra="forbid")
