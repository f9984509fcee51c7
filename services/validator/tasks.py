"""The validation checks, run by the sandboxed worker.

``run_checks`` runs the checks of one upload in order in one worker, which parses the
model once (one ``onnx.load``, one onnxruntime session) and reports each check as it
finishes. The ``check_*`` functions run one check on a model file. Every function takes
JSON-able keyword arguments (paths inside the worker's private directory, the validator's
settings as a dict); a check's result is ``{"passed": bool, "message": str}``. They are
imported only inside the worker, after it has confined itself.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from schemas.config import ValidatorConfig
from services.validator.domain import (
    declared_shape_problems,
    external_data_problems,
    external_tensors,
    policy_problems,
)
from services.validator.inputs import generate_feeds, non_finite
from services.validator.onnx_utils import concrete_input_dims, load_model, stored_bytes

__all__ = [
    "check_checker",
    "check_external_data",
    "check_load",
    "check_policy",
    "check_reference",
    "check_shape_inference",
    "check_trial_inference",
    "probe",
    "run_checks",
    "unpack_archive",
]

Result = dict[str, Any]
_MAX_PROBLEMS = 5
#: Initializers larger than this are left out of the model given to shape inference.
_DETACH_BYTES = 65536


def _passed(message: str, **extra: Any) -> Result:
    return {"passed": True, "message": message, **extra}


def _failed(message: str) -> Result:
    return {"passed": False, "message": message}


def _problems(problems: list[str]) -> Result:
    more = len(problems) - _MAX_PROBLEMS
    text = "; ".join(problems[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return _failed(text)


def _load(model: str) -> onnx.ModelProto:
    return load_model(model)


def probe() -> Result:
    """Nothing: lets the service check at start-up that workers can confine themselves."""
    return _passed("the sandbox works")


def unpack_archive(archive: str, target: str, max_bytes: int) -> Result:
    """Extract a ZIP upload (a model with external data) into ``target``, refusing
    members with absolute paths, ``..``, symbolic links or a total size above ``max_bytes``.
    The archive must hold exactly one ``.onnx`` file at its top level."""
    root = Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        return _failed(f"the upload looks like a ZIP archive but cannot be read: {exc}")
    with zf:
        members = zf.infolist()
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            return _failed(
                f"the archive expands to {total} bytes, more than validator.max_file_size "
                f"= {max_bytes}"
            )
        models = []
        for m in members:
            name = m.filename
            path = PurePosixPath(name)
            mode = m.external_attr >> 16
            if path.is_absolute() or name.startswith(("/", "\\")) or "\\" in name:
                return _failed(f"archive member {name!r} has an absolute path")
            if ".." in path.parts:
                return _failed(f"archive member {name!r} escapes the archive ('..')")
            if stat.S_ISLNK(mode):
                return _failed(f"archive member {name!r} is a symbolic link")
            if m.is_dir():
                (root / path).mkdir(parents=True, exist_ok=True)
                continue
            if name.endswith(".onnx") and len(path.parts) == 1:
                models.append(name)
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(dest, "xb") as out:
                written = 0
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > m.file_size:
                        return _failed(f"archive member {name!r} is larger than it declares")
                    out.write(block)
    if len(models) != 1:
        return _failed(
            f"the archive must hold exactly one .onnx file at its top level, found {len(models)}"
        )
    return _passed(
        f"archive of {len(members)} members, {total} bytes, model {models[0]!r}", model=models[0]
    )


class _Model:
    """One model file and what the checks made of it, so that each is made once: the
    parsed protobuf (without external data) and the onnxruntime session."""

    def __init__(self, path: str, config: ValidatorConfig) -> None:
        self.path = path
        self.config = config
        self._proto: onnx.ModelProto | None = None
        self._session: Any = None

    @property
    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = _load(self.path)
        return self._proto

    def take_proto(self) -> onnx.ModelProto:
        """The parsed model, for a check that changes it; later checks parse it again."""
        proto, self._proto = self.proto, None
        return proto

    def session(self) -> Any:
        if self._session is None:
            # The session holds its own copy of the weights: the protobuf can go.
            self._proto = None
            self._session = _session(self.path)
        return self._session


def check_load(model: str) -> Result:
    """Parse the protobuf without external data."""
    return _check_load(_Model(model, ValidatorConfig()))


def _check_load(m: _Model) -> Result:
    try:
        proto = m.proto
    except Exception as exc:
        return _failed(f"not a valid ONNX protobuf ({type(exc).__name__}: {exc})")
    if not proto.HasField("graph") or proto.ir_version <= 0:
        return _failed("the file parses as protobuf but is not an ONNX model (no graph or IR)")
    external = len(external_tensors(proto))
    return _passed(
        f"ONNX model, IR version {proto.ir_version}, {len(proto.graph.node)} top-level nodes"
        + (f", {external} tensors with external data" if external else "")
    )


def check_external_data(model: str) -> Result:
    """Every external data location is safe and the right size."""
    return _check_external_data(_Model(model, ValidatorConfig()))


def _check_external_data(m: _Model) -> Result:
    proto = m.proto
    tensors = external_tensors(proto)
    if not tensors:
        return _passed("the model keeps all its data inside the file")
    problems = external_data_problems(proto, Path(m.path).parent)
    if problems:
        return _problems(problems)
    files = {e.value for _, t in tensors for e in t.external_data if e.key == "location"}
    return _passed(
        f"{len(tensors)} tensors in {len(files)} file(s), all inside the model's directory"
    )


def check_policy(model: str, config: dict[str, Any]) -> Result:
    """Domains, opsets, IR version, node count, nesting and tensor sizes are allowed."""
    return _check_policy(_Model(model, ValidatorConfig.model_validate(config)))


def _check_policy(m: _Model) -> Result:
    problems = policy_problems(m.proto, m.config)
    if problems:
        return _problems(problems)
    return _passed("allowed by the policy")


def check_checker(model: str) -> Result:
    """``onnx.checker.check_model(full_check=True)``, by path (large and external models)."""
    return _check_checker(_Model(model, ValidatorConfig()))


def _check_checker(m: _Model) -> Result:
    # By path: the checker parses the file in C++ (no copy of the model through Python),
    # and a model with external data is checked with its data files.
    try:
        onnx.checker.check_model(m.path, full_check=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        return _failed(f"onnx.checker: {text[:600]}")
    return _passed("onnx.checker (full check) passed")


def check_shape_inference(model: str, config: dict[str, Any]) -> Result:
    """Strict shape inference, with dynamic input dimensions at their configured values;
    no inferred tensor may exceed the element limit."""
    return _check_shape_inference(_Model(model, ValidatorConfig.model_validate(config)))


def _infer(proto: onnx.ModelProto, cfg: ValidatorConfig) -> onnx.ModelProto:
    concrete_input_dims(proto, default=cfg.dynamic_dim_default, named=cfg.dynamic_dims)
    return onnx.shape_inference.infer_shapes(
        proto, check_type=True, strict_mode=True, data_prop=True
    )


def _check_shape_inference(m: _Model) -> Result:
    cfg = m.config
    # ``infer_shapes`` copies the model into C++ and the result back; without the large
    # initializers' bytes (inference reads the dims of those) that costs nothing. An
    # inference that wanted their values fails without them: it is run again on the whole
    # model, whose result decides.
    proto = m.take_proto()
    for t in proto.graph.initializer:
        if t.HasField("raw_data") and stored_bytes(t) > _DETACH_BYTES:
            t.ClearField("raw_data")
    try:
        inferred = _infer(proto, cfg)
    except Exception:
        try:
            inferred = _infer(_load(m.path), cfg)
        except Exception as exc:
            text = " ".join(str(exc).split())
            return _failed(f"shape inference failed: {text[:600]}")
    problems = declared_shape_problems(inferred, cfg.max_tensor_elements)
    if problems:
        return _problems(problems)
    known = len(inferred.graph.value_info)
    return _passed(f"shapes inferred for {known} intermediate values")


def _session(model: str, threads: int = 1) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Pre-packing rewrites every MatMul/Conv/Gemm weight into the layout its kernel
    # prefers, which pays off over many runs; the validator runs the model once or twice
    # (for a 100 MB MatMul it is a third of the session's creation time).
    options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_trial_inference(model: str, config: dict[str, Any]) -> Result:
    """Run onnxruntime (CPU) on generated inputs; every output must be finite."""
    return _check_trial_inference(_Model(model, ValidatorConfig.model_validate(config)))


def _check_trial_inference(m: _Model) -> Result:
    cfg = m.config
    try:
        session = m.session()
    except Exception as exc:
        return _failed(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:600]}")
    try:
        feeds = generate_feeds(session, default=cfg.dynamic_dim_default, named=cfg.dynamic_dims)
    except ValueError as exc:
        return _failed(str(exc))
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        return _failed(f"inference failed: {' '.join(str(exc).split())[:600]}")
    names = [o.name for o in session.get_outputs()]
    bad = [
        f"output {name!r} has {n} non-finite value(s)"
        for name, out in zip(names, outputs, strict=True)
        if (n := non_finite(out))
    ]
    if bad:
        return _problems(bad)
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    return _passed(f"ran on generated inputs ({shapes}); {len(outputs)} output(s), all finite")


def check_reference(model: str, reference: str, config: dict[str, Any]) -> Result:
    """Run on the uploaded reference inputs and compare with the expected outputs."""
    return _check_reference(_Model(model, ValidatorConfig.model_validate(config)), reference)


def _check_reference(m: _Model, reference: str) -> Result:
    cfg = m.config
    try:
        data = np.load(reference, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        return _failed(f"the reference file is not a readable .npz archive: {exc}")
    feeds = {k.removeprefix("inputs/"): v for k, v in arrays.items() if k.startswith("inputs/")}
    expected = {
        k.removeprefix("outputs/"): v for k, v in arrays.items() if k.startswith("outputs/")
    }
    if not expected:
        return _failed("the reference file holds no 'outputs/<name>' arrays")
    session = m.session()
    wanted = {i.name for i in session.get_inputs()}
    if missing := sorted(wanted - set(feeds)):
        return _failed(f"the reference file lacks inputs: {', '.join(missing)}")
    if extra := sorted(set(feeds) - wanted):
        return _failed(f"the reference file has inputs the model does not take: {', '.join(extra)}")
    names = [o.name for o in session.get_outputs()]
    if unknown := sorted(set(expected) - set(names)):
        return _failed(f"the model has no outputs named: {', '.join(unknown)}")
    try:
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
    except Exception as exc:
        return _failed(
            f"inference on the reference inputs failed: {' '.join(str(exc).split())[:600]}"
        )
    problems = []
    worst = 0.0
    for name, want in expected.items():
        got = np.asarray(outputs[name])
        if got.shape != want.shape:
            problems.append(
                f"output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
            )
            continue
        if not np.issubdtype(want.dtype, np.number):
            if not np.array_equal(got, want):
                problems.append(f"output {name!r} differs from the expected values")
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        limit = cfg.reference_atol + cfg.reference_rtol * np.abs(want.astype(np.float64))
        over = int(np.count_nonzero(~(diff <= limit)))
        worst = max(worst, float(np.max(diff)) if diff.size else 0.0)
        if over:
            problems.append(
                f"output {name!r}: {over} of {diff.size} values differ by more than "
                f"atol={cfg.reference_atol:g} + rtol={cfg.reference_rtol:g}*|expected| "
                f"(largest difference {float(np.max(diff)):.3g})"
            )
    if problems:
        return _problems(problems)
    return _passed(
        f"{len(expected)} output(s) match the reference (largest difference {worst:.3g})"
    )


def _check_session(m: _Model) -> Result:
    """Create the onnxruntime session (the first part of ``trial_inference``)."""
    try:
        m.session()
    except Exception as exc:
        return _failed(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:600]}")
    return _passed("onnxruntime session created")


_CHECKS: dict[str, Callable[[_Model], Result]] = {
    "session": _check_session,
    "load": _check_load,
    "external_data": _check_external_data,
    "policy": _check_policy,
    "checker": _check_checker,
    "shape_inference": _check_shape_inference,
    "trial_inference": _check_trial_inference,
}


def run_checks(
    model: str, config: dict[str, Any], checks: list[str], reference: str | None = None
) -> Iterator[Result]:
    """Run ``checks`` in order on one model; yields each one's result (with its
    ``"check"`` name) as it finishes and stops after the first failure.

    ``"session"`` creates the onnxruntime session that ``trial_inference`` and
    ``reference`` use (they create it themselves otherwise)."""
    m = _Model(model, ValidatorConfig.model_validate(config))
    for name in checks:
        if name == "reference":
            if reference is None:
                raise ValueError("the reference check needs a reference file")
            result = _check_reference(m, reference)
        else:
            result = _CHECKS[name](m)
        yield {"check": name, **result}
        if not result["passed"]:
            return
