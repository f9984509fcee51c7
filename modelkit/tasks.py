"""The sandboxed tasks every service that runs the sandbox needs, named by string
(``"modelkit.tasks:unpack_archive"``) and imported only inside the worker, after it has
confined itself. Arguments are JSON-able (paths inside the worker's private directory);
a result is ``{"passed": bool, "message": str}`` (``modelkit.results``).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from modelkit import results
from modelkit.results import Result

__all__ = ["probe", "unpack_archive"]


def probe() -> Result:
    """Nothing: lets the service check at start-up that workers can confine themselves."""
    return results.passed("the sandbox works")


def unpack_archive(
    archive: str, target: str, max_bytes: int, setting: str = "validator.max_file_size"
) -> Result:
    """Extract a ZIP upload (a model with external data) into ``target``, refusing
    members with absolute paths, ``..``, symbolic links or a total size above ``max_bytes``
    (the config key ``setting``). The archive must hold exactly one ``.onnx`` file at its
    top level."""
    root = Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        return results.failed(f"the upload looks like a ZIP archive but cannot be read: {exc}")
    with zf:
        members = zf.infolist()
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            return results.failed(
                f"the archive expands to {total} bytes, more than {setting} = {max_bytes}"
            )
        models = []
        for m in members:
            name = m.filename
            path = PurePosixPath(name)
            mode = m.external_attr >> 16
            if path.is_absolute() or name.startswith(("/", "\\")) or "\\" in name:
                return results.failed(f"archive member {name!r} has an absolute path")
            if ".." in path.parts:
                return results.failed(f"archive member {name!r} escapes the archive ('..')")
            if stat.S_ISLNK(mode):
                return results.failed(f"archive member {name!r} is a symbolic link")
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
                        return results.failed(f"archive member {name!r} is larger than it declares")
                    out.write(block)
    if len(models) != 1:
        return results.failed(
            f"the archive must hold exactly one .onnx file at its top level, found {len(models)}"
        )
    return results.passed(
        f"archive of {len(members)} members, {total} bytes, model {models[0]!r}", model=models[0]
    )
