"""The order of the checks and what a report says when one of them fails.

``validate_upload`` takes the decrypted upload (and reference data) in a private work
directory and runs the checks in two sandboxed workers (the onnx side on one parse of the
model, the onnxruntime side on one session), which report each check as it finishes. The
first failure rejects the model; the checks after it are reported as skipped. A worker
that crashes, runs out of memory or time fails the check it was running with that reason.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from modelkit.files import ZIP_MAGIC, hand_over
from modelkit.outcome import SandboxStatus, TaskOutcome
from modelkit.sandbox import Worker, Workers, start_worker, start_workers
from schemas.config import ValidatorConfig
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.logging import get_logger

__all__ = [
    "CHECKS",
    "RUNTIME_CHECKS",
    "STRUCTURE_CHECKS",
    "CheckWorkers",
    "rejected_at",
    "start_check_workers",
    "validate_upload",
]

log = get_logger(__name__)

#: Every check, in the order it runs.
CHECKS = (
    "file",
    "load",
    "external_data",
    "policy",
    "checker",
    "shape_inference",
    "trial_inference",
    "reference",
)
#: The checks the structure worker runs (the onnx side), in order.
STRUCTURE_CHECKS = ("load", "external_data", "policy", "checker", "shape_inference")
#: The checks the runtime worker runs on its onnxruntime session, in order.
RUNTIME_CHECKS = ("trial_inference", "reference")
_RUN_CHECKS = "services.validator.tasks:run_checks"
#: Imports numpy and onnxruntime only, so that its worker is ready soon.
_RUN_RUNTIME_CHECKS = "services.validator.runtime:run_runtime_checks"


def rejected_at(results: list[CheckResult], failed_at: str) -> ValidationReport:
    """The report of checks that stopped at ``failed_at``: ``results`` (ending with its
    failure), then every later check as skipped."""
    rest = CHECKS[CHECKS.index(failed_at) + 1 :]
    skipped = (
        CheckResult(name=n, outcome=CheckOutcome.SKIPPED, message=f"not run: '{failed_at}' failed")
        for n in rest
    )
    return ValidationReport(checks=(*results, *skipped))


def _result(name: str, passed: bool, message: str, started: float) -> CheckResult:
    return CheckResult(
        name=name,
        outcome=CheckOutcome.PASSED if passed else CheckOutcome.FAILED,
        message=message,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _from_outcome(
    name: str, outcome: TaskOutcome, config: ValidatorConfig
) -> tuple[CheckResult, Any]:
    """A check's result from what its worker said (or why it said nothing)."""
    duration = round(outcome.duration_ms, 1)
    if outcome.status is SandboxStatus.OK and isinstance(outcome.value, dict):
        value = outcome.value
        passed = bool(value.get("passed"))
        return CheckResult(
            name=name,
            outcome=CheckOutcome.PASSED if passed else CheckOutcome.FAILED,
            message=str(value.get("message", "")),
            duration_ms=duration,
        ), value
    if outcome.platform_fault:
        # Never worded as the model's fault (isolation included; the start-up self-test
        # should have caught it).
        message = outcome.describe(config.sandbox, "validator")
    elif outcome.status is SandboxStatus.ERROR:
        message = f"the check failed on this model: {outcome.detail}"
    else:
        message = f"the model {outcome.describe(config.sandbox, 'validator')}"
    report = log.error if outcome.platform_fault else log.warning
    report(
        "sandboxed check did not pass" + (" (platform fault)" if outcome.platform_fault else ""),
        check=name,
        status=outcome.status.value,
        detail=outcome.detail,
        stderr=outcome.stderr_tail[-500:],
    )
    failed = CheckResult(
        name=name, outcome=CheckOutcome.FAILED, message=message, duration_ms=duration
    )
    return failed, None


async def _sandboxed(
    name: str, task: str, kwargs: dict[str, Any], config: ValidatorConfig, workdir: Path
) -> tuple[CheckResult, Any]:
    async with start_worker(
        task,
        kwargs,
        steps=1,
        limits=config.sandbox,
        workdir=workdir,
        require_isolation=config.require_network_isolation,
    ) as worker:
        return _from_outcome(name, await worker.next(), config)


class CheckWorkers(Workers):
    """The two sandboxed workers that run an upload's checks (``start_check_workers``)."""

    @property
    def structure(self) -> Worker:
        """``load`` to ``shape_inference``: the onnx side, on one parse of the model."""
        return self.each[0]

    @property
    def runtime(self) -> Worker:
        """The onnxruntime session, then ``trial_inference`` (and ``reference``) on it."""
        return self.each[1]


async def start_check_workers(config: ValidatorConfig, stack: AsyncExitStack) -> CheckWorkers:
    """Start the checks' workers before there is an upload: they confine themselves and
    import onnx and onnxruntime, and read an upload only once ``validate_upload`` gives
    them its path (``StartedAhead`` keeps one such set ready)."""
    # Room for every runtime check: whether there is reference data is known only later.
    tasks = [(_RUN_CHECKS, len(STRUCTURE_CHECKS)), (_RUN_RUNTIME_CHECKS, 1 + len(RUNTIME_CHECKS))]
    return await start_workers(
        stack,
        tasks,
        kind=CheckWorkers,
        work_dir=config.work_dir,
        limits=config.sandbox,
        require_isolation=config.require_network_isolation,
    )


async def validate_upload(
    upload: Path,
    *,
    size: int,
    reference: Path | None,
    config: ValidatorConfig,
    workers: CheckWorkers,
) -> ValidationReport:
    """Run every check on ``upload`` (a file of ``size`` bytes in ``workers.workdir``)
    in ``workers``, started beforehand (``start_check_workers``)."""
    workdir = workers.workdir
    runtime_checks = RUNTIME_CHECKS if reference is not None else RUNTIME_CHECKS[:-1]
    results: list[CheckResult] = []
    started = time.perf_counter()

    # -- file: size, emptiness and, for a ZIP upload, safe extraction
    if size == 0:
        results.append(_result("file", False, "the file is empty", started))
        return rejected_at(results, "file")
    if size > config.max_file_size:
        results.append(
            _result(
                "file",
                False,
                f"the file has {size} bytes, more than validator.max_file_size = "
                f"{config.max_file_size}",
                started,
            )
        )
        return rejected_at(results, "file")
    model_dir = workdir / "model"
    model_dir.mkdir()
    hand_over(model_dir)
    with open(upload, "rb") as f:  # noqa: ASYNC230 - four bytes
        magic = f.read(4)
    if magic == ZIP_MAGIC:
        check, value = await _sandboxed(
            "file",
            "modelkit.tasks:unpack_archive",
            {"archive": str(upload), "target": str(model_dir), "max_bytes": config.max_file_size},
            config,
            workdir,
        )
        results.append(check)
        if check.outcome is CheckOutcome.FAILED:
            return rejected_at(results, "file")
        model = model_dir / str(value["model"])
    else:
        model = model_dir / "model.onnx"
        upload.rename(model)  # noqa: ASYNC240 - a rename within one directory
        results.append(_result("file", True, f"a single ONNX file of {size} bytes", started))

    # Two workers instead of one per check: the structure worker parses the model once for
    # load, external_data, policy, checker and shape_inference; the runtime worker creates
    # the onnxruntime session meanwhile (on the second core) and runs the model on it only
    # once every structural check has passed. Each check keeps the limits of a worker (the
    # sandbox's per-step limits); a worker that dies fails the check it was running.
    await workers.structure.begin(
        {
            "model": str(model),
            "config": config.model_dump(mode="json"),
            "checks": list(STRUCTURE_CHECKS),
        }
    )
    await workers.runtime.begin(
        {
            "model": str(model),
            "checks": ["session", *runtime_checks],
            "reference": str(reference) if reference is not None else None,
            "dynamic_dim_default": config.dynamic_dim_default,
            "dynamic_dims": dict(config.dynamic_dims),
            "reference_atol": config.reference_atol,
            "reference_rtol": config.reference_rtol,
        }
    )
    for name in STRUCTURE_CHECKS:
        check, _ = _answer(name, await workers.structure.next(), config)
        results.append(check)
        if check.outcome is CheckOutcome.FAILED:
            return rejected_at(results, name)
    # The session is part of trial_inference: its failure and its time are that check's.
    session, value = _answer("session", await workers.runtime.next(), config)
    session_ms = session.duration_ms or 0.0
    for name in runtime_checks:
        if value is not None:
            check, value = _answer(name, await workers.runtime.next(), config)
        else:
            check = session.model_copy(update={"name": name})
        if name == "trial_inference":
            total = round(session_ms + (check.duration_ms or 0.0), 1)
            check = check.model_copy(update={"duration_ms": total})
        results.append(check)
        if check.outcome is CheckOutcome.FAILED:
            return rejected_at(results, name)
    if reference is None:
        results.append(
            CheckResult(
                name="reference",
                outcome=CheckOutcome.SKIPPED,
                message="no reference inputs/outputs were uploaded",
            )
        )
    return ValidationReport(checks=tuple(results))


def _answer(name: str, outcome: TaskOutcome, config: ValidatorConfig) -> tuple[CheckResult, Any]:
    """``_from_outcome``, making sure the worker answered for the check expected."""
    check, value = _from_outcome(name, outcome, config)
    if value is not None and value.get("check") != name:
        failed = CheckResult(
            name=name,
            outcome=CheckOutcome.FAILED,
            message=f"the worker answered for {value.get('check')!r} instead",
        )
        return failed, None
    if check.outcome is CheckOutcome.FAILED:
        return check, None
    return check, value
