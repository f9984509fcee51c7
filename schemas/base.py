"""Base classes and validators shared by every wire model."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["WireModel", "between", "canonical_json"]


def canonical_json(data: object) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8; signed bodies hold no floats."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class WireModel(BaseModel):
    """A frozen message that refuses unknown fields: what goes on a wire is exact."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def between(first: datetime, last: datetime, message: str) -> AfterValidator:
    """A validator that refuses an aware datetime outside ``[first, last]`` with ``message``."""

    def check(value: datetime) -> datetime:
        try:
            inside = first <= value <= last
        except OverflowError:  # an offset pushes it past datetime's own range
            inside = False
        if not inside:
            raise ValueError(message)
        return value

    return AfterValidator(check)
