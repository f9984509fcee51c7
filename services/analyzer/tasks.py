"""The analyzer's work on a model file, run by the sandboxed worker (see
``services.validator.sandbox``): the structural profile and the latency measurement.

``profile_and_time`` does both in one worker, one after the other (nothing else runs
beside the latency measurement); ``profile`` and ``measure_latency`` do one each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort

from services.analyzer.domain import analyze
from services.validator.inputs import generate_feeds
from services.validator.onnx_utils import load_model

__all__ = ["measure_latency", "profile", "profile_and_time"]


def profile(model: str, dim_default: int, dims: dict[str, int], max_nodes: int) -> dict[str, Any]:
    """The analysis report (without latency and diff) as JSON."""
    proto = load_model(model)
    # The protobuf is thrown away afterwards: the weights need not survive shape inference.
    report = analyze(
        proto, dim_default=dim_default, dims=dims, max_nodes=max_nodes, keep_weights=False
    )
    return report.model_dump(mode="json")


def profile_and_time(
    model: str,
    dim_default: int,
    dims: dict[str, int],
    max_nodes: int,
    threads: int,
    warmup_runs: int,
    runs: int,
) -> Iterator[dict[str, Any]]:
    """Two steps: the profile (as ``profile``), then the latency (as ``measure_latency``).

    The protobuf is gone before the onnxruntime session is created, so the two never
    hold the weights at the same time."""
    yield profile(model, dim_default, dims, max_nodes)
    yield measure_latency(model, threads, warmup_runs, runs, dim_default, dims)


def measure_latency(
    model: str, threads: int, warmup_runs: int, runs: int, dim_default: int, dims: dict[str, int]
) -> dict[str, Any]:
    """p50/p95 of ``runs`` inferences on onnxruntime CPU after ``warmup_runs``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = generate_feeds(session, default=dim_default, named=dims)
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
        "threads": threads,
    }
