"""The analyzer's latency measurement, run by a sandboxed worker of its own.

It imports numpy and onnxruntime only (no onnx, no pydantic), so that its worker is ready
soon and can create the session while the profile is computed in the other worker. The
measurement itself is a separate step, which the service asks for only once the profile's
worker has finished: nothing of the analyzer runs beside it.
"""

from __future__ import annotations

import time
import zlib  # noqa: F401 - numpy.random's compressed data; imported before the privilege drop
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.random  # the generated inputs' generator, imported lazily by numpy otherwise

from modelkit.external import maps_weights
from modelkit.inputs import generate_feeds
from modelkit.sessions import new_session

__all__ = ["measure", "time_model"]


def measure(session: Any, feeds: dict[str, Any], warmup_runs: int, runs: int) -> dict[str, Any]:
    """p50/p95/mean/min in ms of ``runs`` inferences after ``warmup_runs``."""
    for _ in range(warmup_runs):
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - started) * 1000)
    ms = np.array(samples)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p95_ms": round(float(np.percentile(ms, 95)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "min_ms": round(float(ms.min()), 4),
        "runs": runs,
        "warmup_runs": warmup_runs,
    }


def time_model(
    model: str,
    threads: int,
    warmup_runs: int,
    runs: int,
    dim_default: int,
    dims: dict[str, int],
    package: bool = False,
) -> Iterator[dict[str, Any]]:
    """Two steps: create the session and the inputs (``{"ready": True}``), then measure
    (the latency as ``LatencyStats`` fields)."""
    # As devices run it: they map the weights of a package (ZIP) and of a plain model with
    # large embedded weights, and run those without weight prepacking by default
    # (docs/device-protocol.md); the rest with it.
    prepack = not (package or maps_weights(Path(model)))
    session = new_session(model, threads, prepack=prepack)
    feeds = generate_feeds(session, default=dim_default, named=dims)
    yield {"ready": True}
    yield {**measure(session, feeds, warmup_runs, runs), "threads": threads, "prepacked": prepack}
