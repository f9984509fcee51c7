"""Large embedded weights moved out of a plain ``.onnx`` into a file onnxruntime maps.

onnxruntime copies embedded initializers (``raw_data``) out of the parsed protobuf while it
creates a session, so the model's weights are resident twice at the peak. Weights stored
as external data at page-aligned offsets are memory-mapped instead. After its SHA-256 check
the device rewrites such a model once, next to the artifact, into ``model.onnx`` (the graph
without the large ``raw_data``) and ``weights.bin`` (those bytes, each tensor at a page
boundary), and loads that. The artifact itself is kept as it is.

The rewrite is a streaming pass over the protobuf wire format, never a parse of the whole
model: ModelProto field 7 (graph) → GraphProto field 5 (initializer) → TensorProto field 9
(raw_data). Everything else is copied byte for byte. Memory stays bounded (headers are
read a few bytes at a time, the weights are copied file to file by the kernel). A file the
walker does not fully understand - truncated, a field it does not expect, a tensor already
external - is not rewritten: ``externalize`` returns ``None`` and the file is loaded as it
is, so onnxruntime reports what is wrong with it as before.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ALIGN", "MIN_TENSOR", "MIN_TOTAL", "WEIGHTS", "externalize", "maps_weights"]

ALIGN = max(mmap.ALLOCATIONGRANULARITY, 4096)
"""Offset alignment of each tensor in ``weights.bin`` (what mmap needs)."""
MIN_TENSOR = 64 * 1024
"""Smaller tensors stay embedded: they cost little twice, and padding would waste more."""
MIN_TOTAL = 1024 * 1024
"""A model with fewer movable bytes than this is loaded as it is."""
WEIGHTS = "weights.bin"

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_COPY_BLOCK = 1 << 20
_WINDOW = 64 * 1024
_MAX_FIELDS = 1 << 22  # a walk longer than this is not worth it: load the model as it is


class _NotUnderstood(Exception):
    """The file is not one the walker rewrites (it is then loaded as it is)."""


Piece = bytes | tuple[int, int]
"""Output bytes: literal, or ``(offset, length)`` of the source file."""


@dataclass(slots=True)
class _Pieces:
    items: list[Piece] = field(default_factory=list)
    size: int = 0

    def copy(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        last = self.items[-1] if self.items else None
        if isinstance(last, tuple) and last[0] + last[1] == offset:
            self.items[-1] = (last[0], last[1] + length)
        else:
            self.items.append((offset, length))
        self.size += length

    def literal(self, data: bytes) -> None:
        self.items.append(data)
        self.size += len(data)

    def extend(self, other: _Pieces) -> None:
        for item in other.items:
            if isinstance(item, tuple):
                self.copy(*item)
            else:
                self.literal(item)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One initializer to move: where its ``raw_data`` is in the source and goes in the weights."""

    source_offset: int
    length: int
    weights_offset: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The rewritten model as pieces of the source, and the tensors to copy out."""

    model: tuple[Piece, ...]
    tensors: tuple[Tensor, ...]
    weights_size: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data


class _Reader:
    """Bounds-checked reads of protobuf fields from a file descriptor, with a small buffer.

    Headers are read through a 64 KiB window, so walking many small fields costs few
    system calls; the values of large fields are skipped, never read.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fields_seen = 0
        self._at = 0
        self._buf = b""

    def _head(self, pos: int, end: int) -> bytes:
        want = min(10, end - pos)
        rel = pos - self._at
        if not 0 <= rel <= len(self._buf) - want:
            self._at, self._buf = pos, os.pread(self.fd, _WINDOW, pos)
            rel = 0
        return self._buf[rel : rel + want]

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        value = 0
        for i, byte in enumerate(self._head(pos, end)):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value >= 1 << 64:
                    raise _NotUnderstood("varint overflows 64 bits")
                return value, pos + i + 1
        raise _NotUnderstood(f"truncated or overlong varint at {pos}")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """``(number, wire type, field start, value start, field end)`` of each field."""
        pos = start
        while pos < end:
            self.fields_seen += 1
            if self.fields_seen > _MAX_FIELDS:
                raise _NotUnderstood("too many fields to walk")
            key, value_at = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _NotUnderstood(f"field number 0 at {pos}")
            if wire == _VARINT:
                _, stop = self.varint(value_at, end)
            elif wire == _I64:
                stop = value_at + 8
            elif wire == _I32:
                stop = value_at + 4
            elif wire == _LEN:
                length, value_at = self.varint(value_at, end)
                stop = value_at + length
            else:
                raise _NotUnderstood(f"wire type {wire} at {pos}")
            if stop > end:
                raise _NotUnderstood(f"field at {pos} runs past its message")
            yield number, wire, pos, value_at, stop
            pos = stop


def _tensor(
    reader: _Reader, start: int, end: int, min_tensor: int
) -> tuple[_Pieces, int, int] | None:
    """The tensor without its ``raw_data`` and where that is, or None to keep it whole."""
    rest = _Pieces()
    raw: tuple[int, int] | None = None
    for number, wire, field_at, value_at, stop in reader.fields(start, end):
        if number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            # Already external, or explicitly located: its paths are relative to where the
            # model is, which a rewrite would move. Not ours to touch.
            raise _NotUnderstood("the model already uses external data")
        if number == _TENSOR_RAW_DATA:
            if wire != _LEN or raw is not None:
                raise _NotUnderstood("raw_data that is not one bytes field")
            raw = (value_at, stop - value_at)
        else:
            rest.copy(field_at, stop - field_at)
    if raw is None or raw[1] < min_tensor:
        return None
    return rest, raw[0], raw[1]


def _plan(fd: int, size: int, *, min_tensor: int = MIN_TENSOR) -> Plan:
    """Walk the model in ``fd`` (``size`` bytes) and plan its rewrite.

    Raises ``_NotUnderstood`` for anything outside the subset the walker handles.
    """
    reader = _Reader(fd)
    model = _Pieces()
    tensors: list[Tensor] = []
    weights_size = 0
    graphs = 0
    for number, wire, field_at, value_at, stop in reader.fields(0, size):
        if number != _MODEL_GRAPH:
            model.copy(field_at, stop - field_at)
            continue
        graphs += 1
        if wire != _LEN or graphs > 1:
            raise _NotUnderstood("graph that is not one message")
        graph = _Pieces()
        for g_number, g_wire, g_at, g_value, g_stop in reader.fields(value_at, stop):
            kept = None
            if g_number == _GRAPH_INITIALIZER and g_wire == _LEN:
                kept = _tensor(reader, g_value, g_stop, min_tensor)
            if kept is None:
                graph.copy(g_at, g_stop - g_at)
                continue
            rest, raw_at, raw_len = kept
            offset = -(-weights_size // ALIGN) * ALIGN
            tensors.append(Tensor(raw_at, raw_len, offset))
            weights_size = offset + raw_len
            external = b"".join(
                _string_field(_TENSOR_EXTERNAL_DATA, _string_field(1, k) + _string_field(2, v))
                for k, v in (
                    (b"location", WEIGHTS.encode()),
                    (b"offset", str(offset).encode()),
                    (b"length", str(raw_len).encode()),
                )
            )
            tail = external + _varint(_TENSOR_DATA_LOCATION << 3 | _VARINT) + _varint(_EXTERNAL)
            graph.literal(_varint(_GRAPH_INITIALIZER << 3 | _LEN) + _varint(rest.size + len(tail)))
            graph.extend(rest)
            graph.literal(tail)
        model.literal(_varint(_MODEL_GRAPH << 3 | _LEN) + _varint(graph.size))
        model.extend(graph)
    if graphs != 1:
        raise _NotUnderstood("no graph")
    return Plan(tuple(model.items), tuple(tensors), weights_size)


def _copy(src: int, dst: int, offset: int, length: int, dst_offset: int) -> None:
    """Copy a range file to file in the kernel when it can, in small blocks otherwise."""
    done = 0
    with contextlib.suppress(OSError):
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done, dst_offset + done)
            if n == 0:
                break
            done += n
    while done < length:
        block = os.pread(src, min(_COPY_BLOCK, length - done), offset + done)
        if not block:
            raise OSError(errno.EIO, "model file shrank while it was rewritten")
        os.pwrite(dst, block, dst_offset + done)
        done += len(block)


def maps_weights(source: Path) -> bool:
    """Whether a device maps this model's weights (``externalize`` would rewrite it).

    Such models run without weight prepacking on devices by default, which the analyzer's
    latency measurement follows. Reads field headers only, never the weights.
    """
    with source.open("rb") as f:
        fd = f.fileno()
        try:
            result = _plan(fd, os.fstat(fd).st_size)
        except _NotUnderstood:
            return False
    return sum(t.length for t in result.tensors) >= MIN_TOTAL


def externalize(
    source: Path,
    target: Path,
    *,
    min_tensor: int = MIN_TENSOR,
    min_total: int = MIN_TOTAL,
) -> Path | None:
    """Write ``target/model.onnx`` and ``target/weights.bin`` for the model at ``source``.

    Returns the model path, or ``None`` when the model is to be loaded as it is (nothing
    large enough to move, or a file the walker does not understand). Both files are synced
    before this returns: the caller marks the directory complete afterwards.
    """
    with source.open("rb") as f:
        fd = f.fileno()
        try:
            result = _plan(fd, os.fstat(fd).st_size, min_tensor=min_tensor)
        except _NotUnderstood:
            return None
        if sum(t.length for t in result.tensors) < min_total:
            return None
        target.mkdir(parents=True, exist_ok=True)
        with (target / WEIGHTS).open("wb") as out:
            for t in result.tensors:
                _copy(fd, out.fileno(), t.source_offset, t.length, t.weights_offset)
            out.truncate(result.weights_size)
            os.fsync(out.fileno())
        model = target / "model.onnx"
        with model.open("wb") as out:
            pos = 0
            for piece in result.model:
                if isinstance(piece, tuple):
                    _copy(fd, out.fileno(), piece[0], piece[1], pos)
                    pos += piece[1]
                else:
                    os.pwrite(out.fileno(), piece, pos)
                    pos += len(piece)
            out.truncate(pos)
            os.fsync(out.fileno())
    return model
