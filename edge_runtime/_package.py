"""Model packages: a ZIP holding one top-level ``.onnx`` file and its external data.

The validator accepts such uploads (see ``docs/validation.md``); the device receives the
ZIP as the artifact, verified like any other, and unpacks it next to it before loading.
Unpacking applies the same rules as the validator: no absolute paths, no ``..``, no
symbolic links, no member larger than it declares, and a bounded expanded size.

A plain ``.onnx`` with large embedded weights gets the same directory: its weights are
moved once into a file beside it that onnxruntime memory-maps (``modelkit.external``), so they
are not resident twice while the session is created.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from edge_runtime.errors import InferenceError
from modelkit.durable import sync_directory
from modelkit.external import externalize

__all__ = ["PackageError", "discard_unpacked", "is_package", "model_file", "unpacked_dir"]

_MAX_EXPANDED = 16 * 1024**3
_DONE = ".unpacked"


class PackageError(InferenceError):
    """A model package that cannot be unpacked safely."""

    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(f"model package {path.name} refused: {reason}")


def is_package(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def unpacked_dir(path: Path) -> Path:
    """Where the package at ``path`` is unpacked (removed with the model)."""
    return path.with_name(path.stem + ".pkg")


def discard_unpacked(path: Path) -> None:
    """Remove what was unpacked or rewritten for ``path`` (it is made again when needed)."""
    shutil.rmtree(unpacked_dir(path), ignore_errors=True)


def _complete(target: Path) -> None:
    """Mark ``target`` complete, durably: a power cut never leaves a marked partial copy."""
    (target / _DONE).touch()
    sync_directory(target)


def _externalized(path: Path) -> Path:
    """The rewritten model for the plain ``.onnx`` at ``path``, or ``path`` itself."""
    target = unpacked_dir(path)
    model = target / "model.onnx"
    if (target / _DONE).exists() and model.exists():
        return model
    shutil.rmtree(target, ignore_errors=True)
    try:
        rewritten = externalize(path, target)
    except OSError:
        # No room for the rewrite (or the like): the model still loads as it is.
        rewritten = None
    if rewritten is None:
        shutil.rmtree(target, ignore_errors=True)
        return path
    _complete(target)
    return rewritten


def _check(path: Path, archive: zipfile.ZipFile) -> PurePosixPath:
    total = 0
    models = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
            raise PackageError(path, f"member {info.filename!r} escapes the package")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PackageError(path, f"member {info.filename!r} is a symbolic link")
        total += info.file_size
        if total > _MAX_EXPANDED:
            raise PackageError(path, "expanded size is too large")
        if len(name.parts) == 1 and name.suffix == ".onnx":
            models.append(name)
    if len(models) != 1:
        raise PackageError(path, f"expected one top-level .onnx file, found {len(models)}")
    return models[0]


def model_file(path: Path) -> Path:
    """The ``.onnx`` file to load for the artifact at ``path``.

    For a package, the model unpacked from it; for a plain model with large embedded
    weights, its rewrite with the weights as external data; otherwise ``path`` itself.
    Both are idempotent: a completed directory (marked ``.unpacked``) is reused, a partial
    one (a crash mid-way) is made again.
    """
    if not is_package(path):
        return _externalized(path)
    target = unpacked_dir(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = _check(path, archive)
            if not (target / _DONE).exists():
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    dest = target / info.filename
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                        out.flush()
                        os.fsync(out.fileno())
                    if dest.stat().st_size != info.file_size:
                        raise PackageError(path, f"member {info.filename!r} has the wrong size")
                _complete(target)
    except zipfile.BadZipFile as exc:
        raise PackageError(path, f"not a valid ZIP ({exc})") from None
    return target / member
