"""Waiting for the validator's verdict on an upload (``?wait=SECONDS`` on the upload).

The registry's status is what a deployment checks, so the wait reads that status
(``eaf.rpc.registry.get_version``) with exponential back-off, rather than listening for
``eaf.model.validated``: the validator publishes that event before the registry records
it, and an answer made on the event alone could send the caller to deploy a version the
registry still calls ``validating``. See docs/api.md, "Upload and wait".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from schemas.registry import VersionInfo, WaitUntil, undecided

__all__ = ["FIRST_DELAY", "MAX_DELAY", "MAX_WAIT", "wait_for_verdict"]

#: The longest ``?wait`` an upload takes, in seconds. A proxy in front of the API may cut
#: a request short before that (its read timeout): the answer is then lost, not the upload.
MAX_WAIT = 600
#: The first and the longest pause between two looks at the registry, in seconds: a small
#: model's verdict comes back within the first few looks, a large one's costs one request
#: a second at most.
FIRST_DELAY = 0.05
MAX_DELAY = 1.0


def _last(state: RetryCallState) -> VersionInfo:
    # At the deadline: answer the last look (still validating) instead of raising.
    assert state.outcome is not None
    info: VersionInfo = state.outcome.result()
    return info


async def wait_for_verdict(
    look: Callable[[], Awaitable[VersionInfo]],
    first: VersionInfo,
    *,
    seconds: float,
    until: WaitUntil = "validated",
) -> VersionInfo:
    """Look (``look()``) until the version is validated (or analysed, with
    ``until="analyzed"``) or rejected, for at most ``seconds``; the last look's answer."""

    def still(info: VersionInfo) -> bool:
        return undecided(info.status, until)

    if seconds <= 0 or not still(first):
        return first
    deadline = time.monotonic() + seconds
    retrying = AsyncRetrying(
        retry=retry_if_result(still),
        wait=wait_exponential(multiplier=FIRST_DELAY, max=MAX_DELAY),
        stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
        retry_error_callback=_last,
        sleep=_sleeper(deadline),
    )
    info: VersionInfo = await retrying(look)
    return info


def _sleeper(deadline: float) -> Callable[[float], Awaitable[None]]:
    """tenacity's sleep, cut short at the deadline: the last look is at the deadline, not
    up to one pause after it."""

    async def sleep(delay: float) -> None:
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    return sleep
