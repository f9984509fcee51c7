"""Generated inputs for trial inference and latency runs, and the finiteness test.

Floats are drawn from a seeded standard normal (the same inputs every time, so runs are
comparable); integers are zeros, which are valid indices, lengths and class ids for most
models; booleans are False; strings are ``"a"``. Dynamic dimensions take
``named[symbol]``, else ``default`` (the service's ``dynamic_dims`` and
``dynamic_dim_default``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["generate_feeds", "non_finite"]

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}


def generate_feeds(session: Any, *, default: int, named: Mapping[str, int]) -> dict[str, Any]:
    """One array for every input of an onnxruntime ``InferenceSession``.

    Raises ``ValueError`` for an input whose type cannot be generated (sequences, maps,
    optional values): such a model needs reference inputs.
    """
    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for arg in session.get_inputs():
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise ValueError(
                f"input {arg.name!r} has type {arg.type}, for which no input can be generated; "
                "upload reference inputs with the model"
            )
        shape = [
            d if isinstance(d, int) and d > 0 else int(named.get(str(d), default))
            for d in (arg.shape or [])
        ]
        if dtype in (np.float32, np.float64, np.float16):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.str_:
            feeds[arg.name] = np.full(shape, "a", dtype=object)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds


def non_finite(value: Any) -> int:
    """How many NaN or infinite numbers ``value`` holds (arrays, lists and dicts of them)."""
    if isinstance(value, dict):
        return sum(non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(non_finite(v) for v in value)
    array = np.asarray(value)
    if array.dtype.kind in "fc":
        return int(array.size - np.count_nonzero(np.isfinite(array)))
    return 0
