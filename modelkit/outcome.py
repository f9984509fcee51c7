"""What a sandboxed worker answered, or why it gave no answer.

A worker writes one JSON line per answer (``{"status": ..., "value": ...}``) after its
``ready`` line; a worker that gave none is judged by its exit status and the last words
it wrote to stderr (``outcome_of``).
"""

from __future__ import annotations

import json
import signal
from contextlib import suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from schemas.config import SandboxLimits

__all__ = ["PLATFORM_FAULT", "SandboxStatus", "TaskOutcome", "is_ready", "outcome_of"]

#: How a report begins the reason of a failure of the sandbox itself.
PLATFORM_FAULT = "the sandbox failed (platform fault, not the model's)"


class SandboxStatus(StrEnum):
    OK = "ok"
    #: The task raised; ``detail`` holds the exception.
    ERROR = "error"
    TIMEOUT = "timeout"
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    CRASHED = "crashed"
    #: The worker could not isolate itself as required.
    ISOLATION = "isolation"


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What came back from one worker."""

    status: SandboxStatus
    value: Any = None
    detail: str = ""
    #: How the worker was cut off from the network: ``netns``, ``userns+netns`` or ``none``.
    isolation: str = ""
    duration_ms: float = 0.0
    stderr_tail: str = ""
    #: The worker failed before it read anything of the task's files, or could not import
    #: a module: the platform's fault (installation, host), never the model's.
    platform: bool = False

    @property
    def ok(self) -> bool:
        return self.status is SandboxStatus.OK

    @property
    def platform_fault(self) -> bool:
        """Whether the sandbox itself failed (not the task on its input)."""
        return not self.ok and (self.platform or self.status is SandboxStatus.ISOLATION)

    def describe(self, limits: SandboxLimits, section: str) -> str:
        """A sentence for a report: why the worker gave no answer. A platform fault says
        so first (``the sandbox failed (platform fault, not the model's): ...``)."""
        if self.platform_fault:
            return f"{PLATFORM_FAULT}: {self._reason(limits, section)}"
        return self._reason(limits, section)

    def _reason(self, limits: SandboxLimits, section: str) -> str:
        if self.status is SandboxStatus.TIMEOUT and self.detail:
            return self.detail
        if self.status is SandboxStatus.TIMEOUT:
            return (
                f"did not finish within {limits.wall_seconds:g} s and was killed "
                f"({section}.sandbox.wall_seconds)"
            )
        if self.status is SandboxStatus.CPU_LIMIT:
            return (
                f"used more than {limits.cpu_seconds} s of CPU time and was killed "
                f"({section}.sandbox.cpu_seconds)"
            )
        if self.status is SandboxStatus.MEMORY_LIMIT:
            return (
                f"ran out of memory (limit {limits.memory_mb} MiB, "
                f"{section}.sandbox.memory_mb): {self.detail}"
            )
        if self.status is SandboxStatus.CRASHED:
            return f"crashed the worker process: {self.detail}"
        return self.detail


def is_ready(line: bytes) -> bool:
    """Whether ``line`` is the worker's ``ready`` line (not an answer)."""
    if not line.startswith(b'{"status": "ready"'):
        return False
    with suppress(ValueError):
        return bool(json.loads(line).get("status") == "ready")
    return False


def outcome_of(
    code: int, out: bytes, duration: float, stderr_tail: str, *, started: bool
) -> TaskOutcome:
    """What the worker's exit ``code`` and output say; ``started``: it had said ``ready``
    (before that, nothing it was given had been read: any failure is the platform's)."""
    outcome = _parse_outcome(code, out, duration, stderr_tail)
    if not started and not outcome.ok and not outcome.platform:
        return replace(outcome, platform=True)
    return outcome


def _parse_outcome(code: int, out: bytes, duration: float, stderr_tail: str) -> TaskOutcome:
    reply: dict[str, Any] | None = None
    lines = [line for line in out.strip().splitlines() if not is_ready(line)]
    if lines:
        with suppress(ValueError):
            reply = json.loads(lines[-1].decode(errors="replace"))
    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU:
            return TaskOutcome(SandboxStatus.CPU_LIMIT, duration_ms=duration)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        detail = f"killed by signal {name}"
        if sig == signal.SIGKILL:
            # We kill only on timeout (handled above): this is the CPU hard limit or the
            # kernel's out-of-memory killer.
            detail += " (CPU time hard limit or the kernel's out-of-memory killer)"
        if sig == signal.SIGABRT and "bad_alloc" in stderr_tail:
            return TaskOutcome(SandboxStatus.MEMORY_LIMIT, detail="std::bad_alloc")
        last = _last_line(stderr_tail)
        return TaskOutcome(
            SandboxStatus.CRASHED,
            detail=f"{detail}{': ' + last if last else ''}",
            duration_ms=duration,
            stderr_tail=stderr_tail,
        )
    if not isinstance(reply, dict):
        last = _last_line(stderr_tail)
        return TaskOutcome(
            SandboxStatus.CRASHED,
            detail=f"the worker exited with status {code} without an answer"
            + (f": {last}" if last else ""),
            duration_ms=duration,
            stderr_tail=stderr_tail,
        )
    isolation = str(reply.get("isolation", ""))
    status = SandboxStatus(reply.get("status", "error"))
    return TaskOutcome(
        status,
        value=reply.get("value"),
        detail=str(reply.get("detail", "")),
        isolation=isolation,
        duration_ms=duration,
        stderr_tail=stderr_tail,
        platform=bool(reply.get("platform", False)),
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
