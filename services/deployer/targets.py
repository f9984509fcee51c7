"""How the deployer ends a target on its own (cancelled, failed unsealable) and its event."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime

from schemas.deployer import check_x25519_public_key
from schemas.events import DeploymentTargetUpdated, TargetState
from services.deployer.store import Device, Target

__all__ = ["REMOVED_DETAIL", "cancel", "fail_unsealable", "target_event"]

#: Why a target of a device taken out of the fleet is cancelled.
REMOVED_DETAIL = "device removed from the fleet"


def target_event(t: Target) -> DeploymentTargetUpdated:
    return DeploymentTargetUpdated(
        deployment_id=uuid.UUID(t.deployment_id),
        device_id=t.device_id,
        state=TargetState(t.state),
        detail=t.detail,
        bytes_received=t.bytes_received,
    )


def cancel(t: Target, detail: str, now: datetime) -> DeploymentTargetUpdated:
    """Cancel target ``t`` (``detail`` says why); its event."""
    t.state = TargetState.CANCELLED.value
    t.detail = detail
    t.updated_at = now
    return target_event(t)


@functools.lru_cache(maxsize=4096)
def _key_problem(public_key: str) -> str | None:
    """Why no data key can be sealed to this stored device key, or ``None``.

    Enrolment refuses such keys; rows stored before it did may still hold one. A trial
    exchange costs about 0.1 ms, so the answer is kept per key.
    """
    try:
        check_x25519_public_key(public_key)
    except ValueError as exc:
        return str(exc)
    return None


def fail_unsealable(t: Target, d: Device, now: datetime) -> DeploymentTargetUpdated | None:
    """Fail target ``t`` when no data key can be sealed to ``d``; its event, else ``None``.

    Sealing would raise on every attempt: the target would stay ``notified`` and its
    deployment ``running`` until cancelled.
    """
    problem = _key_problem(d.public_key or "")
    if problem is None:
        return None
    t.state = TargetState.FAILED.value
    t.detail = (
        f"the device's enrolled key is unusable, no model key can be sealed to it ({problem}); "
        "re-enrol the device with a token made for its id"
    )
    t.updated_at = now
    return target_event(t)
