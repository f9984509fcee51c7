"""Hosting the active ONNX model: load, health check, atomic switch, inference.

A request takes a reference to the session that is active when it starts and finishes on
it; a switch only replaces that reference. So inference keeps being answered by the old
session until the new one has loaded and passed its health check, and no request fails
because of a switch. The old session is freed when its last request returns.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from edge_runtime._package import discard_unpacked, model_file
from edge_runtime.errors import InferenceError, NoModelError
from schemas.transfer import ActiveModel

__all__ = ["InferenceRecorder", "LoadedModel", "ModelHost", "sample_inputs"]

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class InferenceRecorder(Protocol):
    """Called after every inference (the metrics hook): which model, how long, whether ok."""

    def __call__(self, *, model: str, version: str, latency_ms: float, ok: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """An onnxruntime session and what it is."""

    info: ActiveModel
    session: ort.InferenceSession
    path: Path


def sample_inputs(session: ort.InferenceSession, *, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs of the right names, types and shapes (dynamic dimensions set to ``batch``)."""
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise InferenceError(f"input {arg.name!r} has unsupported type {arg.type}")
        shape = [d if isinstance(d, int) and d > 0 else batch for d in (arg.shape or [])]
        feeds[arg.name] = np.ones(shape, dtype=dtype)
    return feeds


def _trim_heap() -> None:
    """Hand the heap the transfer left free back to the OS before the model is mapped."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _load(path: Path, threads: int, prepack: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # A package (ZIP with external data) is unpacked beside the artifact first; a plain
    # model's large weights are moved to a file beside it. Either way onnxruntime maps
    # the weights from that file instead of copying them out of the protobuf.
    file = model_file(path)
    _trim_heap()
    if file != path and not prepack:
        # Prepacking would put a second, reordered copy of each mapped weight in memory
        # (a 100 MiB MatMul peaks at 2x its weights with it, 1x without).
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _health_check(session: ort.InferenceSession) -> None:
    outputs = session.run(None, sample_inputs(session))
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InferenceError(f"output {meta.name!r} is not finite on the health input")


class ModelHost:
    """The model that answers inference on this device."""

    def __init__(
        self,
        *,
        threads: int = 1,
        recorder: InferenceRecorder | None = None,
        prepack: bool = False,
    ) -> None:
        """``prepack=True`` keeps onnxruntime's weight prepacking for memory-mapped weights.

        Faster inference for some models (up to a third at batch 1), at the price of a
        second copy of those weights in memory; off by default.
        """
        self.threads = threads
        self.recorder = recorder
        self.prepack = prepack
        self._current: LoadedModel | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eaf-infer")

    @property
    def active(self) -> ActiveModel | None:
        return self._current.info if self._current is not None else None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    async def prepare(self, path: Path, info: ActiveModel) -> LoadedModel:
        """Load ``path`` and run the health inference, off the event loop.

        Raises ``InferenceError`` when the model does not load or fails its health check;
        the active model is untouched either way.
        """
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(
                self._pool, _load, path, self.threads, self.prepack
            )
        except Exception as exc:
            await loop.run_in_executor(self._pool, discard_unpacked, path)
            raise InferenceError(f"model does not load: {exc}") from None
        try:
            await loop.run_in_executor(self._pool, _health_check, session)
        except Exception as exc:
            del session
            await loop.run_in_executor(self._pool, discard_unpacked, path)
            if isinstance(exc, InferenceError):
                raise
            raise InferenceError(f"health inference failed: {exc}") from None
        return LoadedModel(info=info, session=session, path=path)

    def switch(self, loaded: LoadedModel | None) -> LoadedModel | None:
        """Make ``loaded`` the active model; requests already running finish on the old one."""
        old, self._current = self._current, loaded
        return old

    async def infer(self, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the active model; ``inputs=None`` runs it on generated sample inputs."""
        return (await self.run(inputs))[1]

    async def run(
        self, inputs: Mapping[str, np.ndarray] | None = None
    ) -> tuple[ActiveModel, dict[str, np.ndarray]]:
        """Like ``infer``, and also says which model answered."""
        loaded = self._current  # pinned for the whole request: a switch cannot pull it away
        if loaded is None:
            raise NoModelError()
        start = time.perf_counter()
        ok = False
        try:
            feeds = dict(inputs) if inputs is not None else sample_inputs(loaded.session)
            loop = asyncio.get_running_loop()
            try:
                values = await loop.run_in_executor(self._pool, loaded.session.run, None, feeds)
            except Exception as exc:
                raise InferenceError(str(exc)) from None
            names = [o.name for o in loaded.session.get_outputs()]
            ok = True
            return loaded.info, {n: np.asarray(v) for n, v in zip(names, values, strict=True)}
        finally:
            if self.recorder is not None:
                self.recorder(
                    model=loaded.info.model,
                    version=loaded.info.version,
                    latency_ms=(time.perf_counter() - start) * 1000.0,
                    ok=ok,
                )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
