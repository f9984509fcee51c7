"""The validator's rules as pure functions over a parsed model: the policy and the
external-data rules. Each returns the problems it finds, worded for the uploader.

The sandboxed checks in ``services.validator.tasks`` call these; unit tests call them
directly.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import onnx
from onnx import TensorProto

from modelkit.onnx_utils import dtype_bits, iter_graphs, iter_tensors, tensor_numel
from schemas.config import ValidatorConfig
from schemas.reports import normalize_domain

__all__ = [
    "declared_shape_problems",
    "external_data_problems",
    "external_tensors",
    "policy_problems",
]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def policy_problems(model: onnx.ModelProto, config: ValidatorConfig) -> list[str]:
    """Where ``model`` breaks the configured policy (domains, opsets, IR, size, depth)."""
    problems: list[str] = []
    if not config.ir_version_min <= model.ir_version <= config.ir_version_max:
        problems.append(
            f"IR version {model.ir_version} is outside the allowed range "
            f"{config.ir_version_min}..{config.ir_version_max}"
        )
    allowed = {normalize_domain(d): r for d, r in config.allowed_opsets.items()}
    imported: dict[str, int] = {}
    for opset in model.opset_import:
        domain = normalize_domain(opset.domain)
        imported[domain] = max(imported.get(domain, 0), int(opset.version))
    if not model.opset_import:
        problems.append("the model imports no opset")
    for domain, version in sorted(imported.items()):
        if domain not in allowed:
            problems.append(
                f"operator domain {domain!r} is not allowed (allowed: "
                f"{', '.join(sorted(allowed))}; add it to validator.allowed_opsets to accept it)"
            )
            continue
        low, high = allowed[domain]
        if not low <= version <= high:
            problems.append(
                f"opset {version} of domain {domain!r} is outside the allowed range {low}..{high}"
            )
    node_count = 0
    depth = 0
    used: dict[str, set[str]] = {}
    for ref in iter_graphs(model.graph):
        depth = max(depth, ref.depth)
        node_count += len(ref.graph.node)
        for node in ref.graph.node:
            used.setdefault(normalize_domain(node.domain), set()).add(node.op_type)
    for domain in sorted(set(used) - set(imported)):
        problems.append(f"operators of domain {domain!r} are used but the domain is not imported")
    for domain in sorted(set(used) - set(allowed)):
        ops = ", ".join(sorted(used[domain])[:10])
        problems.append(f"custom operators of domain {domain!r} are not allowed: {ops}")
    if node_count > config.max_node_count:
        problems.append(
            f"the model has {_plural(node_count, 'node')}, more than the limit of "
            f"{config.max_node_count}"
        )
    if depth > config.max_graph_depth:
        problems.append(
            f"subgraphs are nested {depth} deep, more than the limit of {config.max_graph_depth}"
        )
    problems += declared_shape_problems(model, config.max_tensor_elements)
    return problems


def declared_shape_problems(model: onnx.ModelProto, max_elements: int) -> list[str]:
    """Tensors whose declared element count is above ``max_elements``.

    Covers stored tensors (by their dims, whether or not data is present) and every value
    whose shape the file declares with fixed dimensions.
    """
    problems: list[str] = []
    for where, tensor in iter_tensors(model.graph):
        if any(d < 0 for d in tensor.dims):
            problems.append(f"{where} has a negative dimension {list(tensor.dims)}")
            continue
        n = tensor_numel(tensor.dims)
        if n > max_elements:
            problems.append(
                f"{where} declares {n:,} elements (shape {list(tensor.dims)}), more than "
                f"validator.max_tensor_elements = {max_elements:,}"
            )
    for ref in iter_graphs(model.graph):
        g = ref.graph
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
            n = tensor_numel(dims) if dims else 0
            if n > max_elements:
                problems.append(
                    f"value {vi.name!r} is declared with {n:,} elements, more than "
                    f"validator.max_tensor_elements = {max_elements:,}"
                )
    return problems


def external_tensors(model: onnx.ModelProto) -> list[tuple[str, TensorProto]]:
    """Stored tensors whose data lives in an external file."""
    return [
        (where, t)
        for where, t in iter_tensors(model.graph)
        if t.data_location == TensorProto.EXTERNAL
    ]


def _location_problem(location: str, model_dir: Path) -> str | None:
    """Why ``location`` may not be read, or None. Nothing is followed through a symlink."""
    if not location:
        return "has no location"
    if "\0" in location or "\\" in location:
        return f"location {location!r} contains a backslash or NUL byte"
    path = PurePosixPath(location)
    if path.is_absolute() or location.startswith("~") or (len(location) > 1 and location[1] == ":"):
        return f"location {location!r} is an absolute path; it must be relative to the model"
    if ".." in path.parts:
        return f"location {location!r} escapes the model's directory ('..')"
    current = model_dir
    for part in path.parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return f"location {location!r} does not exist next to the model"
        except OSError as exc:
            return f"location {location!r} cannot be read ({exc.strerror})"
        if stat.S_ISLNK(info.st_mode):
            return f"location {location!r} goes through a symbolic link ({part!r})"
    if not stat.S_ISREG(os.lstat(current).st_mode):
        return f"location {location!r} is not a regular file"
    return None


def external_data_problems(model: onnx.ModelProto, model_dir: Path) -> list[str]:
    """Problems of the model's external data references, checked without reading them.

    Every location must be relative, stay inside ``model_dir``, pass through no symbolic
    link, and the byte range (offset, length) must lie inside the file and equal the size
    the tensor's dims and element type call for.
    """
    problems: list[str] = []
    for where, tensor in external_tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        problem = _location_problem(location, model_dir)
        if problem is not None:
            problems.append(f"{where}: external data {problem}")
            continue
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            problems.append(f"{where}: external data offset/length are not integers")
            continue
        file_size = (model_dir / location).stat().st_size
        bits = dtype_bits(tensor.data_type)
        expected = (tensor_numel(tensor.dims) * bits + 7) // 8 if bits else None
        size = length if length is not None else file_size - offset
        if offset < 0 or (length is not None and length < 0) or offset + size > file_size:
            problems.append(
                f"{where}: external data range offset={offset} length={size} lies outside "
                f"{location!r} ({file_size} bytes)"
            )
        elif expected is not None and size != expected:
            problems.append(
                f"{where}: external data in {location!r} holds {size} bytes but the tensor "
                f"needs {expected}"
            )
    return problems
