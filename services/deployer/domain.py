"""The deployer's pure logic: waves, thresholds, preflight, state progression. No I/O."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from enum import StrEnum

from schemas.deployer import Capabilities, DeploymentStatus
from schemas.events import DeploymentOutcome, TargetState
from schemas.reports import DeviceRequirements

__all__ = [
    "ACTIVE_STATUSES",
    "FAILED_STATES",
    "WaveVerdict",
    "advances",
    "assign_waves",
    "count_states",
    "evaluate_wave",
    "final_outcome",
    "plan_waves",
    "preflight",
]

#: Statuses of a deployment that is not finished.
ACTIVE_STATUSES = (DeploymentStatus.RUNNING.value, DeploymentStatus.PAUSED.value)
#: Terminal states that count against a wave's error threshold.
FAILED_STATES = frozenset({TargetState.FAILED, TargetState.ROLLED_BACK, TargetState.TIMED_OUT})
_ORDER = {
    TargetState.PENDING: 0,
    TargetState.NOTIFIED: 1,
    TargetState.DOWNLOADING: 2,
    TargetState.VERIFYING: 3,
    TargetState.ACTIVATING: 4,
}


def plan_waves(total: int, specs: Sequence[str]) -> list[int]:
    """Cumulative target counts at the end of each wave; the last wave takes the rest.

    ``"1"`` is a count, ``"10%"`` a share of ``total`` (rounded up, at least one more
    device than the wave before). Waves that would add nobody are dropped.
    """
    if total <= 0:
        return []
    cumulative: list[int] = []
    for spec in specs:
        if spec.endswith("%"):
            n = math.ceil(total * float(spec[:-1]) / 100.0)
        else:
            n = int(spec)
        n = min(max(n, 1), total)
        if not cumulative or n > cumulative[-1]:
            cumulative.append(n)
    if not cumulative or cumulative[-1] < total:
        cumulative.append(total)
    return cumulative


def assign_waves(device_ids: Iterable[str], cumulative: Sequence[int]) -> dict[str, int]:
    """Wave index of each device, in a stable order (sorted ids)."""
    ordered = sorted(device_ids)
    result: dict[str, int] = {}
    wave = 0
    for position, device in enumerate(ordered):
        while position >= cumulative[wave]:
            wave += 1
        result[device] = wave
    return result


class WaveVerdict(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    STOP = "stop"


def evaluate_wave(
    states: Sequence[TargetState], *, success_threshold: float, error_threshold: float
) -> WaveVerdict:
    """hawkBit's rule: stop when the failed share passes the error threshold; advance when
    the active share reaches the success threshold; otherwise wait.

    Cancelled targets (their device was removed from the fleet) count neither way: the
    wave is judged on the devices still in it."""
    states = [s for s in states if s is not TargetState.CANCELLED]
    if not states:
        return WaveVerdict.ADVANCE
    n = len(states)
    failed = sum(1 for s in states if s in FAILED_STATES)
    active = sum(1 for s in states if s is TargetState.ACTIVE)
    if failed / n > error_threshold + 1e-9:
        return WaveVerdict.STOP
    if active / n >= success_threshold - 1e-9:
        return WaveVerdict.ADVANCE
    if all(s.terminal for s in states):
        # Everyone finished, not enough succeeded, yet within the error threshold: the
        # success condition can no longer be met.
        return WaveVerdict.STOP
    return WaveVerdict.WAIT


def final_outcome(states: Iterable[TargetState]) -> DeploymentOutcome:
    """The outcome of a deployment whose targets are all terminal.

    Succeeded when every target that was not cancelled is active; cancelled when none is
    left (every device was removed from the fleet); failed otherwise.
    """
    remaining = [s for s in states if s is not TargetState.CANCELLED]
    if not remaining:
        return DeploymentOutcome.CANCELLED
    if all(s is TargetState.ACTIVE for s in remaining):
        return DeploymentOutcome.SUCCEEDED
    return DeploymentOutcome.FAILED


def advances(old: TargetState, new: TargetState) -> bool:
    """May a target move from ``old`` to ``new`` on a device report? Never out of a final
    state, never backwards through the transfer."""
    if old.terminal:
        return False
    if new.terminal:
        return True
    return _ORDER.get(new, 0) > _ORDER.get(old, 0)


def count_states(states: Iterable[TargetState]) -> dict[TargetState, int]:
    return dict(Counter(states))


def _version_tuple(value: str) -> tuple[int, ...]:
    parts = []
    for piece in value.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def preflight(
    capabilities: Capabilities,
    requirements: DeviceRequirements | None,
    *,
    min_onnxruntime: str | None = None,
) -> str | None:
    """Why a device cannot run a model, or None if it can.

    Compares the analyzer's requirements (minimum opset per domain, operator domains) and
    an optional minimum onnxruntime version with what the device reported at enrolment.
    """
    if min_onnxruntime and _version_tuple(capabilities.onnxruntime_version) < _version_tuple(
        min_onnxruntime
    ):
        return (
            f"onnxruntime {capabilities.onnxruntime_version} is older than the "
            f"{min_onnxruntime} the model needs"
        )
    if requirements is None:
        return None
    supported = {
        ("ai.onnx" if d in ("", "ai.onnx") else d): v for d, v in capabilities.opsets.items()
    }
    for domain, needed in sorted(requirements.opsets.items()):
        key = "ai.onnx" if domain in ("", "ai.onnx") else domain
        have = supported.get(key)
        if have is None:
            return f"operator domain {key!r} is not supported by this runtime"
        if have < needed:
            return f"opset {needed} of {key!r} needed, the runtime supports up to {have}"
    for operator in requirements.operators:
        domain = operator.split("::", 1)[0] if "::" in operator else "ai.onnx"
        key = "ai.onnx" if domain in ("", "ai.onnx") else domain
        if key not in supported:
            return f"operator {operator} needs domain {key!r}, not supported by this runtime"
    return None
