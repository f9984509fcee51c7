"""The start-up self-tests of a service that runs the sandbox.

``prove_sandbox`` starts one worker to show it can confine itself as configured;
``SELFTEST_MODEL`` is the built-in model a service then validates or times through its
own workers and code, as it would an upload. ``SANDBOX_FIX`` is what an operator can do
when either fails.
"""

from __future__ import annotations

import base64

import structlog

from modelkit.errors import SandboxUnavailableError
from modelkit.files import private_workdir
from modelkit.sandbox import run_task
from schemas.config import AnalyzerConfig, SandboxLimits, ValidatorConfig

__all__ = ["SANDBOX_FIX", "SELFTEST_MODEL", "prove_sandbox"]

log = structlog.get_logger(__name__)

#: y = x @ w + b, x of shape [n, 4] (opset 17, 188 bytes): what the start-up self-tests
#: validate and time, through the same workers and code as an uploaded model.
SELFTEST_MODEL = base64.b64decode(
    "CAgSFGVkZ2VhaWZvcmdlLXNlbGZ0ZXN0OpsBChIKAXgKAXcSAnkwIgZNYXRNdWwKDwoCeTAKAWISAXkiA0Fk"
    "ZBIIc2VsZnRlc3QqKwgECAIQAUIBd0ogAAAAPwAAAD8AAAA/AAAAPwAAAD8AAAA/AAAAPwAAAD8qEQgCEAFC"
    "AWJKCAAAgD8AAIA/WhQKAXgSDwoNCAESCQoDEgFuCgIIBGIUCgF5Eg8KDQgBEgkKAxIBbgoCCAJCBAoAEBE="
)
#: What an operator can do when the start-up self-test fails (docs/validation.md).
SANDBOX_FIX = (
    "the sandbox's workers run as user nobody when the service runs as root: install the "
    "project and its virtualenv where nobody may read them (not inside a directory of mode "
    "0700 such as /root or one made by mktemp -d), allow the service mount namespaces "
    "(it then shows them to the workers itself), or run the service as another user; "
    "the worker's last words are in the service's log (docs/validation.md, 'The sandbox')"
)


async def prove_sandbox(config: ValidatorConfig | AnalyzerConfig, *, section: str) -> str:
    """Start one worker to prove it can confine itself as ``config`` (the service's section,
    named ``section`` in what is logged or raised) asks; returns the isolation it got."""
    work_dir, memory_mb = config.work_dir, config.sandbox.memory_mb
    require_isolation = config.require_network_isolation
    async with private_workdir(work_dir) as workdir:
        outcome = await run_task(
            "modelkit.tasks:probe",
            {},
            limits=SandboxLimits(cpu_seconds=30, memory_mb=memory_mb, wall_seconds=60),
            workdir=workdir,
            require_isolation=require_isolation,
        )
    if not outcome.ok:
        raise SandboxUnavailableError(outcome.detail or outcome.status.value, section=section)
    if outcome.isolation == "none":
        log.warning(
            "sandbox workers run WITHOUT network isolation",
            setting=f"{section}.require_network_isolation",
        )
    return outcome.isolation
