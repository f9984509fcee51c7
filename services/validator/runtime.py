"""The onnxruntime side of validation, run by the sandboxed worker: ``trial_inference``
and ``reference`` on one session.

It imports numpy and onnxruntime only (no onnx, no pydantic), so that its worker is ready
soon; the validator's settings come as plain arguments. Results are
``{"passed": bool, "message": str}`` (``modelkit.results``).
"""

from __future__ import annotations

import zipfile  # noqa: F401 - np.load of the reference; imported before the privilege drop
import zlib  # noqa: F401 - numpy.random's and zipfile's compressed data (see above)
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.lib.format
import numpy.random  # the generated inputs' generator, imported lazily by numpy otherwise

from modelkit.inputs import generate_feeds, non_finite
from modelkit.results import Result, failed, passed, problems
from modelkit.sessions import new_session

__all__ = ["RuntimeSettings", "Session", "run_runtime_checks"]


class RuntimeSettings:
    """What the runtime checks read of ``ValidatorConfig``."""

    def __init__(
        self,
        dynamic_dim_default: int,
        dynamic_dims: dict[str, int],
        reference_atol: float,
        reference_rtol: float,
    ) -> None:
        self.dynamic_dim_default = dynamic_dim_default
        self.dynamic_dims = dynamic_dims
        self.reference_atol = reference_atol
        self.reference_rtol = reference_rtol


class Session:
    """A model file and its onnxruntime session, created on first use."""

    def __init__(self, path: str, settings: RuntimeSettings) -> None:
        self.path = path
        self.config = settings
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            self._session = new_session(self.path)
        return self._session


def check_session(m: Session) -> Result:
    """Create the onnxruntime session (the first part of ``trial_inference``)."""
    try:
        m.session()
    except Exception as exc:
        return failed(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:600]}")
    return passed("onnxruntime session created")


def check_trial_inference(m: Session) -> Result:
    cfg = m.config
    try:
        session = m.session()
    except Exception as exc:
        return failed(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:600]}")
    try:
        feeds = generate_feeds(session, default=cfg.dynamic_dim_default, named=cfg.dynamic_dims)
    except ValueError as exc:
        return failed(str(exc))
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        return failed(f"inference failed: {' '.join(str(exc).split())[:600]}")
    names = [o.name for o in session.get_outputs()]
    bad = [
        f"output {name!r} has {n} non-finite value(s)"
        for name, out in zip(names, outputs, strict=True)
        if (n := non_finite(out))
    ]
    if bad:
        return problems(bad)
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    return passed(f"ran on generated inputs ({shapes}); {len(outputs)} output(s), all finite")


def check_reference(m: Session, reference: str) -> Result:
    cfg = m.config
    try:
        data = np.load(reference, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        return failed(f"the reference file is not a readable .npz archive: {exc}")
    feeds = {k.removeprefix("inputs/"): v for k, v in arrays.items() if k.startswith("inputs/")}
    expected = {
        k.removeprefix("outputs/"): v for k, v in arrays.items() if k.startswith("outputs/")
    }
    if not expected:
        return failed("the reference file holds no 'outputs/<name>' arrays")
    session = m.session()
    wanted = {i.name for i in session.get_inputs()}
    if missing := sorted(wanted - set(feeds)):
        return failed(f"the reference file lacks inputs: {', '.join(missing)}")
    if extra := sorted(set(feeds) - wanted):
        return failed(f"the reference file has inputs the model does not take: {', '.join(extra)}")
    names = [o.name for o in session.get_outputs()]
    if unknown := sorted(set(expected) - set(names)):
        return failed(f"the model has no outputs named: {', '.join(unknown)}")
    try:
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
    except Exception as exc:
        return failed(
            f"inference on the reference inputs failed: {' '.join(str(exc).split())[:600]}"
        )
    found = []
    worst = 0.0
    for name, want in expected.items():
        got = np.asarray(outputs[name])
        if got.shape != want.shape:
            found.append(
                f"output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
            )
            continue
        if not np.issubdtype(want.dtype, np.number):
            if not np.array_equal(got, want):
                found.append(f"output {name!r} differs from the expected values")
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        limit = cfg.reference_atol + cfg.reference_rtol * np.abs(want.astype(np.float64))
        over = int(np.count_nonzero(~(diff <= limit)))
        worst = max(worst, float(np.max(diff)) if diff.size else 0.0)
        if over:
            found.append(
                f"output {name!r}: {over} of {diff.size} values differ by more than "
                f"atol={cfg.reference_atol:g} + rtol={cfg.reference_rtol:g}*|expected| "
                f"(largest difference {float(np.max(diff)):.3g})"
            )
    if found:
        return problems(found)
    return passed(f"{len(expected)} output(s) match the reference (largest difference {worst:.3g})")


def run_runtime_checks(
    model: str,
    checks: list[str],
    reference: str | None,
    dynamic_dim_default: int,
    dynamic_dims: dict[str, int],
    reference_atol: float,
    reference_rtol: float,
) -> Iterator[Result]:
    """Run ``checks`` (``session``, ``trial_inference``, ``reference``) in order on one
    session; yields each one's result (with its ``"check"`` name) and stops after the
    first failure."""
    settings = RuntimeSettings(dynamic_dim_default, dynamic_dims, reference_atol, reference_rtol)
    m = Session(model, settings)
    for name in checks:
        if name == "session":
            result = check_session(m)
        elif name == "trial_inference":
            result = check_trial_inference(m)
        elif name == "reference" and reference is not None:
            result = check_reference(m, reference)
        else:
            raise ValueError(f"no runtime check {name!r} (or no reference file for it)")
        yield {"check": name, **result}
        if not result["passed"]:
            return
