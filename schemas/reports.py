"""Reports that the validator and the analyzer attach to their events."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from schemas._base import WireModel

__all__ = ["AnalysisReport", "CheckOutcome", "CheckResult", "ValidationReport"]


class CheckOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class CheckResult(WireModel):
    """One validation check: its name, its outcome and a message a user can act on."""

    name: str
    outcome: CheckOutcome
    message: str = ""
    duration_ms: float | None = None


class ValidationReport(WireModel):
    """Every check run on one artifact, in order."""

    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(c.outcome is not CheckOutcome.FAILED for c in self.checks)


class AnalysisReport(WireModel):
    """The analyzer's profile of a model (parameters, FLOPs, operators, memory, latency).

    The body is the analyzer's own structure; see ``services/analyzer`` and
    ``docs/analysis.md`` for its fields.
    """

    body: dict[str, Any]
