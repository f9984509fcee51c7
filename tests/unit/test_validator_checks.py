"""The validator's rules on real model files: external data, policy, reference outputs.

These call the check functions directly; ``test_sandbox.py`` covers the worker
that runs them, ``tests/integration/test_validation_pipeline.py`` the whole service.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelkit.onnx_utils import load_model
from schemas.config import ValidatorConfig
from services.validator import runtime, tasks
from services.validator.domain import external_data_problems, policy_problems
from tests.support.models import (
    custom_domain_model,
    external_data_model,
    huge_tensor_model,
    sklearn_pipeline_model,
    tiny_model,
    to_bytes,
)

BIAS = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)


def _session(model: str | Path, config: ValidatorConfig | None = None) -> runtime.Session:
    """The runtime worker's session on ``model``, with ``config``'s settings."""
    cfg = config or ValidatorConfig()
    settings = runtime.RuntimeSettings(
        dynamic_dim_default=cfg.dynamic_dim_default,
        dynamic_dims=dict(cfg.dynamic_dims),
        reference_atol=cfg.reference_atol,
        reference_rtol=cfg.reference_rtol,
    )
    return runtime.Session(str(model), settings)


def _save(directory: Path, model: onnx.ModelProto) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    path.write_bytes(to_bytes(model))
    return path


def test_external_data_inside_the_directory_is_accepted_and_runs(tmp_path: Path) -> None:
    model = _save(tmp_path / "m", external_data_model("weights/bias.bin", length=16))
    (tmp_path / "m" / "weights").mkdir()
    (tmp_path / "m" / "weights" / "bias.bin").write_bytes(BIAS.tobytes())
    assert tasks.check_external_data(str(model))["passed"]
    assert tasks.check_checker(str(model))["passed"]
    result = runtime.check_trial_inference(_session(model))
    assert result["passed"], result


def test_external_data_through_a_symlink_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 16)
    model = _save(tmp_path / "m", external_data_model("bias.bin"))
    os.symlink(secret, tmp_path / "m" / "bias.bin")
    problems = external_data_problems(onnx.load(model, load_external_data=False), model.parent)
    assert problems == [
        "initializer 'b': external data location 'bias.bin' goes through a symbolic link "
        "('bias.bin')"
    ]


def test_external_data_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "bias.bin").write_bytes(BIAS.tobytes())
    model = _save(tmp_path / "m", external_data_model("data/bias.bin"))
    os.symlink(tmp_path / "elsewhere", tmp_path / "m" / "data")
    result = tasks.check_external_data(str(model))
    assert not result["passed"] and "symbolic link ('data')" in result["message"]


def test_external_data_locations_that_leave_the_directory_are_refused(tmp_path: Path) -> None:
    for location, reason in [
        ("../../etc/passwd", "escapes the model's directory"),
        ("/etc/passwd", "is an absolute path"),
        ("a/../../x", "escapes the model's directory"),
        ("C:\\Windows\\win.ini", "backslash"),
        ("missing.bin", "does not exist"),
    ]:
        model = _save(
            tmp_path / location.replace("/", "_").replace("\\", "_"), external_data_model(location)
        )
        result = tasks.check_external_data(str(model))
        assert not result["passed"] and reason in result["message"], (location, result)


def test_external_data_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    model = _save(tmp_path / "m", external_data_model("bias.bin"))
    (tmp_path / "m" / "bias.bin").write_bytes(b"\0" * 12)
    result = tasks.check_external_data(str(model))
    assert not result["passed"]
    assert "holds 12 bytes but the tensor needs 16" in result["message"]
    model = _save(tmp_path / "n", external_data_model("bias.bin", length=64))
    (tmp_path / "n" / "bias.bin").write_bytes(b"\0" * 16)
    assert "lies outside" in tasks.check_external_data(str(model))["message"]


def test_policy_accepts_the_ml_domain_and_refuses_custom_ones() -> None:
    config = ValidatorConfig()
    assert policy_problems(sklearn_pipeline_model(), config) == []
    problems = policy_problems(custom_domain_model("com.acme"), config)
    assert any("'com.acme' is not allowed" in p for p in problems)
    assert any("Exfiltrate" in p for p in problems)
    allowed = ValidatorConfig(allowed_opsets={"ai.onnx": (7, 24), "com.acme": (1, 1)})
    assert policy_problems(custom_domain_model("com.acme"), allowed) == []


def test_policy_limits_ir_opset_size_and_nesting() -> None:
    model = tiny_model()
    strict = ValidatorConfig(
        allowed_opsets={"ai.onnx": (18, 24)}, ir_version_max=7, max_node_count=1
    )
    refused = " | ".join(policy_problems(model, strict))
    assert "IR version 8 is outside the allowed range 3..7" in refused
    assert "opset 17 of domain 'ai.onnx' is outside the allowed range 18..24" in refused
    assert "2 nodes, more than the limit of 1" in refused
    huge = policy_problems(huge_tensor_model(), ValidatorConfig())
    assert any("declares 1,000,000,000,000 elements" in p for p in huge)

    inner = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_in"])],
        "inner",
        [],
        [helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [1, 4])],
    )
    graph = inner
    for depth in range(3):
        graph = helper.make_graph(
            [helper.make_node("If", ["c"], ["y_in"], then_branch=graph, else_branch=graph)],
            f"level{depth}",
            [],
            [helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [1, 4])],
        )
    nested = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    problems = policy_problems(nested, ValidatorConfig(max_graph_depth=2))
    assert any("nested 3 deep, more than the limit of 2" in p for p in problems)


def _reference(path: Path, **arrays: npt.ArrayLike) -> str:
    np.savez(path, allow_pickle=False, **arrays)
    return str(path)


def test_reference_outputs_are_compared_with_tolerance(tmp_path: Path) -> None:
    model = _save(tmp_path / "m", tiny_model())
    x = np.array([[1.0, 1.0, -2.0, 3.0]], dtype=np.float32)
    y = np.maximum(x + BIAS, 0)
    config = ValidatorConfig(reference_atol=1e-3, reference_rtol=0)
    good = _reference(tmp_path / "good.npz", **{"inputs/x": x, "outputs/y": y + 5e-4})
    assert runtime.check_reference(_session(model, config), good)["passed"]
    bad = _reference(tmp_path / "bad.npz", **{"inputs/x": x, "outputs/y": y + 0.5})
    result = runtime.check_reference(_session(model, config), bad)
    assert not result["passed"] and "4 of 4 values differ" in result["message"]
    missing = _reference(tmp_path / "missing.npz", **{"outputs/y": y})
    assert "lacks inputs: x" in runtime.check_reference(_session(model, config), missing)["message"]


def test_reference_files_with_pickles_are_refused(tmp_path: Path) -> None:
    model = _save(tmp_path / "m", tiny_model())
    np.savez(
        tmp_path / "pickled.npz",
        allow_pickle=True,
        **{"inputs/x": np.array([{"evil": 1}], dtype=object)},
    )
    result = runtime.check_reference(_session(model), str(tmp_path / "pickled.npz"))
    assert not result["passed"] and "not a readable .npz" in result["message"]


def test_non_finite_outputs_fail_the_trial_inference(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["l"]), helper.make_node("Sub", ["l", "l"], ["y"])],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(tmp_path / "m", model)
    # Generated inputs are standard normal: log of the negative ones is NaN.
    result = runtime.check_trial_inference(_session(path))
    assert not result["passed"] and "non-finite" in result["message"]


def test_load_model_parses_like_onnx_load(tmp_path: Path) -> None:
    path = _save(tmp_path / "m", tiny_model())
    assert load_model(path) == onnx.load(path, load_external_data=False)
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:-3])
    with pytest.raises(Exception, match="Error parsing message"):
        load_model(tmp_path / "cut.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert load_model(tmp_path / "empty.onnx") == onnx.ModelProto()


def test_shape_inference_reads_large_initializers_when_it_needs_their_values(
    tmp_path: Path,
) -> None:
    # A Reshape whose shape input is an initializer above the size left out of the first
    # inference (80 KB): inference needs its values, so the whole model decides.
    target = np.array([1] * 9998 + [16, 16], dtype=np.int64)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(target, "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(tmp_path / "m", model)
    result = tasks.check_shape_inference(str(path), ValidatorConfig().model_dump(mode="json"))
    assert result["passed"], result


def test_run_checks_reports_in_order_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    config = ValidatorConfig().model_dump(mode="json")
    checks = ["load", "external_data", "policy", "checker", "shape_inference"]
    good = _save(tmp_path / "good", tiny_model())
    results = list(tasks.run_checks(str(good), config, checks))
    assert [r["check"] for r in results] == checks and all(r["passed"] for r in results)
    bad = _save(tmp_path / "bad", custom_domain_model())
    results = list(tasks.run_checks(str(bad), config, checks))
    assert [r["check"] for r in results] == ["load", "external_data", "policy"]
    assert not results[-1]["passed"] and "'com.evil' is not allowed" in results[-1]["message"]


def test_the_runtime_checks_share_one_session(tmp_path: Path) -> None:
    model = _save(tmp_path / "m", tiny_model())
    x = np.array([[1.0, 1.0, -2.0, 3.0]], dtype=np.float32)
    reference = _reference(
        tmp_path / "ref.npz", **{"inputs/x": x, "outputs/y": np.maximum(x + BIAS, 0)}
    )
    run = functools.partial(
        runtime.run_runtime_checks,
        dynamic_dim_default=1,
        dynamic_dims={},
        reference_atol=1e-4,
        reference_rtol=1e-4,
    )
    checks = ["session", "trial_inference", "reference"]
    results = list(run(str(model), checks, reference))
    assert [r["check"] for r in results] == checks and all(r["passed"] for r in results)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    results = list(run(str(tmp_path / "broken.onnx"), checks, None))
    assert [r["check"] for r in results] == ["session"]
    assert "onnxruntime cannot load the model" in results[0]["message"]
