"""The order of the checks and what a report says when one of them fails.

``validate_upload`` takes the decrypted upload (and reference data) in a private work
directory and runs every check in its own sandboxed worker. The first failure rejects the
model; the checks after it are reported as skipped. A worker that crashes, runs out of
memory or time fails its check with that reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from schemas.config import ValidatorConfig
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.logging import get_logger
from services.validator.sandbox import SandboxStatus, hand_over, run_task

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
#: Sandboxed checks running at once (each is one worker process with the model loaded).
_PARALLEL_CHECKS = max(1, min(2, os.cpu_count() or 1))
_TASKS = {
    "load": "services.validator.tasks:check_load",
    "external_data": "services.validator.tasks:check_external_data",
    "policy": "services.validator.tasks:check_policy",
    "checker": "services.validator.tasks:check_checker",
    "shape_inference": "services.validator.tasks:check_shape_inference",
    "trial_inference": "services.validator.tasks:check_trial_inference",
    "reference": "services.validator.tasks:check_reference",
}


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


async def _sandboxed(
    name: str, task: str, kwargs: dict[str, Any], config: ValidatorConfig, workdir: Path
) -> tuple[CheckResult, Any]:
    started = time.perf_counter()
    outcome = await run_task(
        task,
        kwargs,
        limits=config.sandbox,
        workdir=workdir,
        require_isolation=config.require_network_isolation,
    )
    if outcome.status is SandboxStatus.OK and isinstance(outcome.value, dict):
        value = outcome.value
        return _result(
            name, bool(value.get("passed")), str(value.get("message", "")), started
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
    return _result(name, False, message, started), None


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

    base: dict[str, Any] = {"model": str(model)}
    cfg = config.model_dump(mode="json")
    # The checks are independent of each other; each worker loads the model itself, so
    # two at a time halve the wall time on a machine with two cores or more. They start in
    # order and are reported in order: the first failure rejects, later ones are skipped
    # (cancelled, their workers killed, if still running).
    slots = asyncio.Semaphore(_PARALLEL_CHECKS)

    async def sandboxed(name: str, kwargs: dict[str, Any]) -> tuple[CheckResult, Any]:
        async with slots:
            return await _sandboxed(name, _TASKS[name], kwargs, config, workdir)

    running: dict[str, asyncio.Task[tuple[CheckResult, Any]]] = {}
    for name in CHECKS[1:]:
        kwargs = dict(base)
        if name in ("policy", "shape_inference", "trial_inference", "reference"):
            kwargs["config"] = cfg
        if name == "reference":
            if reference is None:
                continue
            kwargs["reference"] = str(reference)
        running[name] = asyncio.create_task(sandboxed(name, kwargs))
    try:
        for name in CHECKS[1:]:
            task = running.get(name)
            if task is None:
                results.append(
                    CheckResult(
                        name=name,
                        outcome=CheckOutcome.SKIPPED,
                        message="no reference inputs/outputs were uploaded",
                    )
                )
                continue
            check, _ = await task
            results.append(check)
            if check.outcome is CheckOutcome.FAILED:
                return rejected_at(results, name)
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
    return ValidationReport(checks=tuple(results))
