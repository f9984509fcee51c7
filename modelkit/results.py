"""What a sandboxed check returns (``modelkit.tasks``, the validator's checks):
``{"passed": bool, "message": str}``, with at most five problems spelled out."""

from __future__ import annotations

from typing import Any

__all__ = ["Result", "failed", "passed", "problems"]

Result = dict[str, Any]
_MAX_PROBLEMS = 5


def passed(message: str, **extra: Any) -> Result:
    return {"passed": True, "message": message, **extra}


def failed(message: str) -> Result:
    return {"passed": False, "message": message}


def problems(found: list[str]) -> Result:
    """A failure listing the first problems found and how many more there are."""
    more = len(found) - _MAX_PROBLEMS
    text = "; ".join(found[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return failed(text)
