"""The order of the checks and what a report says when one of them fails.

``validate_upload`` takes the decrypted upload (and reference data) in a private work
directory and runs the checks in order in one sandboxed worker, which parses the model
once and reports each check as it finishes. The first failure rejects the model; the
checks after it are reported as skipped. A worker that crashes, runs out of memory or time
fails the check it was running with that reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from schemas.config import ValidatorConfig
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.logging import get_logger
from services.validator.sandbox import SandboxStatus, TaskOutcome, hand_over, start_worker

__all__ = ["CHECKS", "ZIP_MAGIC", "rejected_at", "validate_upload", "write_stream"]

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
ZIP_MAGIC = b"PK\x03\x04"


class _TooLarge(Exception):
    pass


async def write_stream(chunks: AsyncIterable[bytes], dest: Path, *, limit: int) -> int:
    """Write a byte stream to ``dest``; stops (and returns ``limit + 1``) past ``limit``."""
    written = 0
    with open(dest, "wb") as out:  # noqa: ASYNC230 - small writes of already-decrypted chunks
        async for piece in chunks:
            written += len(piece)
            if written > limit:
                return limit + 1
            out.write(piece)
    hand_over(dest)
    return written


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
    if outcome.status is SandboxStatus.ERROR:
        message = f"the check failed on this model: {outcome.detail}"
    elif outcome.status is SandboxStatus.ISOLATION:
        message = f"the sandbox could not isolate the worker from the network: {outcome.detail}"
    else:
        message = f"the model {outcome.describe(config.sandbox, 'validator')}"
    log.warning(
        "sandboxed check did not pass",
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


async def validate_upload(
    upload: Path,
    *,
    size: int,
    reference: Path | None,
    config: ValidatorConfig,
    workdir: Path,
) -> ValidationReport:
    """Run every check on ``upload`` (a file of ``size`` bytes inside ``workdir``)."""
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
            "services.validator.tasks:unpack_archive",
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

    # One worker runs the checks in order: it parses the model once and creates one
    # onnxruntime session (trial inference and reference), where a worker per check would
    # parse it once per check. Each check keeps the limits of a worker (the sandbox's
    # per-step limits); a worker that dies fails the check it was running.
    checks = [n for n in CHECKS[1:] if n != "reference" or reference is not None]
    kwargs: dict[str, Any] = {
        "model": str(model),
        "config": config.model_dump(mode="json"),
        "checks": checks,
        "reference": str(reference) if reference is not None else None,
    }
    async with start_worker(
        "services.validator.tasks:run_checks",
        kwargs,
        steps=len(checks),
        limits=config.sandbox,
        workdir=workdir,
        require_isolation=config.require_network_isolation,
    ) as worker:
        for name in checks:
            check, value = _from_outcome(name, await worker.next(), config)
            if value is not None and value.get("check") != name:
                check = CheckResult(
                    name=name,
                    outcome=CheckOutcome.FAILED,
                    message=f"the worker answered for {value.get('check')!r} instead",
                )
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
