"""Model packages on the device: a ZIP with external data unpacks safely and runs."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_runtime._package import PackageError, model_file, unpacked_dir


def package(tmp_path: Path) -> bytes:
    """A model whose weight lives in ``weights/w.bin``, zipped with it."""
    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    onnx.save_model(
        model,
        str(src / "model.onnx"),
        save_as_external_data=True,
        location="weights/w.bin",
        size_threshold=0,
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(src / "model.onnx", "model.onnx")
        z.write(src / "weights" / "w.bin", "weights/w.bin")
    return buf.getvalue()


def test_package_unpacks_and_runs(tmp_path: Path) -> None:
    artifact = tmp_path / "models" / ("ab" * 32 + ".onnx")
    artifact.parent.mkdir()
    artifact.write_bytes(package(tmp_path))
    onnx_path = model_file(artifact)
    assert onnx_path.parent == unpacked_dir(artifact)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 4096), dtype=np.float32)})
    assert y[0, 10] == 11.0
    assert model_file(artifact) == onnx_path  # unpacked once, reused


def test_plain_model_is_loaded_as_it_is(tmp_path: Path) -> None:
    plain = tmp_path / "m.onnx"
    plain.write_bytes(b"\x08\x08")
    assert model_file(plain) == plain


@pytest.mark.parametrize(
    ("name", "symlink", "reason"),
    [
        ("../evil.bin", False, "escapes"),
        ("/etc/evil.bin", False, "escapes"),
        ("link.bin", True, "symbolic link"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, name: str, symlink: bool, reason: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.onnx", b"x")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, b"/etc/passwd")
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(buf.getvalue())
    with pytest.raises(PackageError, match=reason):
        model_file(artifact)
    assert not (tmp_path / "evil.bin").exists()


def test_package_without_one_model_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.onnx", b"x")
        z.writestr("b.onnx", b"y")
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(buf.getvalue())
    with pytest.raises(PackageError, match="one top-level .onnx"):
        model_file(artifact)
