"""Test-only fault injection: end the process at a named activation step, as a power cut would.

The resilience tests run ``edge-runtime run`` with ``EAF_EDGE_FAULT_CRASH_AT=<step>``; the
command (an entrypoint, the only place that reads the environment) arms the step, and
the runtime calls ``point(step)`` as it passes each one. An armed step ends the process
at once with ``os._exit`` (no cleanup, no flush, no ``finally``), exit status
``FAULT_EXIT_STATUS``. Unarmed, ``point`` does nothing.

Steps, in order: ``verifying`` (every chunk on disk, nothing checked yet), ``moved``
(verified and moved into ``models/``, not loaded), ``loaded`` (loaded and health-checked,
not switched), ``installed`` (``installed.json`` names the new model, the outcome is not
recorded), ``recorded`` (outcome recorded, not yet reported).
"""

from __future__ import annotations

import os

__all__ = ["ENV_CRASH_AT", "FAULT_EXIT_STATUS", "STEPS", "arm", "point"]

ENV_CRASH_AT = "EAF_EDGE_FAULT_CRASH_AT"
STEPS = ("verifying", "moved", "loaded", "installed", "recorded")
#: The exit status of a process ended by an armed step (so a test tells it from a crash).
FAULT_EXIT_STATUS = 86

_armed: str | None = None


def arm(step: str | None) -> None:
    """Arm ``step`` (``None`` or ``""`` disarms); an unknown step is a ``ValueError``."""
    global _armed
    if step and step not in STEPS:
        raise ValueError(f"unknown fault step {step!r}; one of {', '.join(STEPS)}")
    _armed = step or None


def point(step: str) -> None:
    """End the process here if ``step`` is armed."""
    if _armed == step:
        os._exit(FAULT_EXIT_STATUS)
