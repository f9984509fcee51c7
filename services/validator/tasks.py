"""The validation checks, run by the sandboxed worker.

``run_checks`` runs the structural checks of one upload (``load`` .. ``shape_inference``)
in order in one worker, which parses the model once and reports each check as it finishes;
the runtime checks are ``services.validator.runtime``'s, in a worker of their own. The
``check_*`` functions run one check on a model file. Every function takes
JSON-able keyword arguments (paths inside the worker's private directory, the validator's
settings as a dict); a check's result is ``{"passed": bool, "message": str}``. They are
imported only inside the worker, after it has confined itself. The tasks every sandbox
user runs (unpacking an archive, the start-up probe) are ``modelkit.tasks``'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

from modelkit import results
from modelkit.onnx_utils import concrete_input_dims, load_model, stored_bytes
from modelkit.results import Result
from schemas.config import ValidatorConfig
from services.validator.domain import (
    declared_shape_problems,
    external_data_problems,
    external_tensors,
    policy_problems,
)

__all__ = [
    "check_checker",
    "check_external_data",
    "check_load",
    "check_policy",
    "check_shape_inference",
    "run_checks",
]

#: Initializers larger than this are left out of the model given to shape inference.
_DETACH_BYTES = 65536


def _load(model: str) -> onnx.ModelProto:
    return load_model(model)


class _Model:
    """One model file and its parsed protobuf (without external data), made once for all
    the structural checks."""

    def __init__(self, path: str, config: ValidatorConfig) -> None:
        self.path = path
        self.config = config
        self._proto: onnx.ModelProto | None = None

    @property
    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = _load(self.path)
        return self._proto

    def take_proto(self) -> onnx.ModelProto:
        """The parsed model, for a check that changes it; later checks parse it again."""
        proto, self._proto = self.proto, None
        return proto

    def drop_weights(self) -> None:
        """Keep the parsed model (if parsed) without the bytes of its large initializers
        (their dims stay): the checks after ``policy`` do not read them, and the checker's
        own parse of the file then does not add to a second copy of the weights."""
        if self._proto is None:
            return
        for t in self._proto.graph.initializer:
            if t.HasField("raw_data") and stored_bytes(t) > _DETACH_BYTES:
                t.ClearField("raw_data")
        # A cleared field keeps its memory until the message goes: copy what is left.
        light = onnx.ModelProto()
        light.CopyFrom(self._proto)
        self._proto = light


def check_load(model: str) -> Result:
    """Parse the protobuf without external data."""
    return _check_load(_Model(model, ValidatorConfig()))


def _check_load(m: _Model) -> Result:
    try:
        proto = m.proto
    except Exception as exc:
        return results.failed(f"not a valid ONNX protobuf ({type(exc).__name__}: {exc})")
    if not proto.HasField("graph") or proto.ir_version <= 0:
        return results.failed(
            "the file parses as protobuf but is not an ONNX model (no graph or IR)"
        )
    external = len(external_tensors(proto))
    return results.passed(
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
        return results.passed("the model keeps all its data inside the file")
    problems = external_data_problems(proto, Path(m.path).parent)
    if problems:
        return results.problems(problems)
    files = {e.value for _, t in tensors for e in t.external_data if e.key == "location"}
    return results.passed(
        f"{len(tensors)} tensors in {len(files)} file(s), all inside the model's directory"
    )


def check_policy(model: str, config: dict[str, Any]) -> Result:
    """Domains, opsets, IR version, node count, nesting and tensor sizes are allowed."""
    return _check_policy(_Model(model, ValidatorConfig.model_validate(config)))


def _check_policy(m: _Model) -> Result:
    problems = policy_problems(m.proto, m.config)
    if problems:
        return results.problems(problems)
    return results.passed("allowed by the policy")


def check_checker(model: str) -> Result:
    """``onnx.checker.check_model(full_check=True)``, by path (large and external models)."""
    return _check_checker(_Model(model, ValidatorConfig()))


def _check_checker(m: _Model) -> Result:
    m.drop_weights()
    # By path: the checker parses the file in C++ (no copy of the model through Python),
    # and a model with external data is checked with its data files.
    try:
        onnx.checker.check_model(m.path, full_check=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        return results.failed(f"onnx.checker: {text[:600]}")
    return results.passed("onnx.checker (full check) passed")


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
    for t in proto.graph.initializer:  # dropped already when the checker ran before
        if t.HasField("raw_data") and stored_bytes(t) > _DETACH_BYTES:
            t.ClearField("raw_data")
    try:
        inferred = _infer(proto, cfg)
    except Exception:
        try:
            inferred = _infer(_load(m.path), cfg)
        except Exception as exc:
            text = " ".join(str(exc).split())
            return results.failed(f"shape inference failed: {text[:600]}")
    problems = declared_shape_problems(inferred, cfg.max_tensor_elements)
    if problems:
        return results.problems(problems)
    known = len(inferred.graph.value_info)
    return results.passed(f"shapes inferred for {known} intermediate values")


_CHECKS: dict[str, Callable[[_Model], Result]] = {
    "load": _check_load,
    "external_data": _check_external_data,
    "policy": _check_policy,
    "checker": _check_checker,
    "shape_inference": _check_shape_inference,
}


def run_checks(model: str, config: dict[str, Any], checks: list[str]) -> Iterator[Result]:
    """Run the structural ``checks`` (``load`` .. ``shape_inference``) in order on one
    model; yields each one's result (with its ``"check"`` name) as it finishes and stops
    after the first failure. The runtime checks are ``services.validator.runtime``'s."""
    m = _Model(model, ValidatorConfig.model_validate(config))
    for name in checks:
        result = _CHECKS[name](m)
        yield {"check": name, **result}
        if not result["passed"]:
            return
