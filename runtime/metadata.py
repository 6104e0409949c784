"""Read and describe the metadata every edgeconv model file carries, with no engine at all.

TFLite: a flatbuffer whose Model.metadata list has an entry named "edgeconv" pointing to a
buffer of JSON. ONNX: a protobuf whose ModelProto.metadata_props has the key "edgeconv".
Both are parsed here with the standard library, so a device can read a model's labels and
preprocessing before it picks an engine, and a truncated file is caught up front.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from pathlib import Path

from edgeconv.runtime.kinds import ModelKind, kind_of
from edgeconv.runtime.text import display

METADATA_KEY = "edgeconv"
METADATA_FORMAT = "edgeconv-model/1"
MAX_MODEL_BYTES = 512 * 1024 * 1024  # far above any edge model (the shipped ones: 3-14 MB)
MAX_METADATA_BYTES = 1024 * 1024  # the real metadata is about 1 KB
MAX_METADATA_DEPTH = 32  # the real metadata nests 3 deep
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


class ModelFileError(ValueError):
    """A file that is not a readable model of its kind, or carries no edgeconv metadata."""


def read_metadata(path: str | os.PathLike) -> dict:
    """The edgeconv metadata dict of a .tflite or .onnx file, with what only the machine that
    made it should know (absolute paths) left out."""
    path = Path(path)
    data = read_model_file(path)
    kind = model_kind(path, data)
    entries = READERS[kind.name](data, path)
    if METADATA_KEY not in entries:
        raise ModelFileError(f"{display(path)}: no edgeconv metadata; export it with "
                             f"export/to_{kind.name}.py")
    return public(parse_metadata(entries[METADATA_KEY], path))


def read_model_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_MODEL_BYTES; anything else (a FIFO,
    /dev/zero, a folder, a huge file) is refused before it is read. Opened without blocking
    and checked on the open file, so a FIFO swapped in after a check cannot hang the reader."""
    limit = f"over the {MAX_MODEL_BYTES // 2**20} MiB limit for a model"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ModelFileError(f"{display(path)}: cannot read ({error.strerror or error})"
                             ) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ModelFileError(f"{display(path)}: not a regular file")
        if status.st_size > MAX_MODEL_BYTES:
            raise ModelFileError(f"{display(path)}: {status.st_size / 2**20:.0f} MiB, {limit}")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_MODEL_BYTES + 1)
    except OSError as error:
        raise ModelFileError(f"{display(path)}: cannot read ({error.strerror or error})"
                             ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_MODEL_BYTES:  # it grew while read
        raise ModelFileError(f"{display(path)}: {limit}")
    return data


def parse_metadata(text: str | bytes, path: Path | str = "<model>") -> dict:
    """The metadata JSON as a dict; too large, too deeply nested or not an object is a
    ModelFileError (json would raise RecursionError on deep nesting)."""
    if len(text) > MAX_METADATA_BYTES:
        raise ModelFileError(f"{display(path)}: edgeconv metadata over "
                             f"{MAX_METADATA_BYTES // 1024} KiB")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = deepest = 0
    for bracket in re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_METADATA_DEPTH:
        raise ModelFileError(f"{display(path)}: edgeconv metadata nested over "
                             f"{MAX_METADATA_DEPTH} deep")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        raise ModelFileError(f"{display(path)}: edgeconv metadata is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{display(path)}: edgeconv metadata is not a JSON object")
    return metadata


def public(metadata: dict) -> dict:
    """`metadata` without the calibration folder's absolute path, which models exported
    before export described the set by name, count and digest still carry."""
    calibration = metadata.get("calibration")
    if isinstance(calibration, dict) and "folder" in calibration:
        calibration = dict(calibration)
        folder = str(calibration.pop("folder"))
        calibration.setdefault("name", "/".join(Path(folder).parts[-2:]))
        metadata = {**metadata, "calibration": calibration}
    return metadata


def model_kind(path: Path, data: bytes) -> ModelKind:
    """The file's kind (runtime/kinds.py), from its content, falling back to its suffix."""
    kind = kind_of(path, data)
    if kind is None:
        raise ModelFileError(f"{display(path)}: not a TFLite or ONNX model")
    return kind


def tflite_metadata(data: bytes, path: Path | str = "<tflite>") -> dict[str, bytes]:
    """name -> bytes of every entry in a TFLite flatbuffer's Model.metadata."""
    try:
        model = _table(data, _u32(data, 0))
        buffers = _vector_of_tables(data, model, 4)
        entries = {}
        for entry in _vector_of_tables(data, model, 6):
            name = _string(data, entry, 0)
            index = _scalar(data, entry, 1, "<I", 0)
            entries[name] = _buffer_bytes(data, buffers[index])
        return entries
    except (struct.error, IndexError, UnicodeDecodeError):
        raise ModelFileError(f"{display(path)}: truncated or corrupt TFLite file") from None


def onnx_metadata(data: bytes, path: Path | str = "<onnx>") -> dict[str, str]:
    """key -> value of an ONNX ModelProto's metadata_props (field 14)."""
    try:
        fields = _protobuf_fields(data)
        if 7 not in {number for number, _ in fields}:  # a ModelProto always has a graph
            raise ModelFileError(f"{display(path)}: not an ONNX model (no graph)")
        entries = {}
        for number, value in fields:
            if number == 14:
                pairs = dict(_protobuf_fields(value))
                entries[pairs.get(1, b"").decode()] = pairs.get(2, b"").decode()
        return entries
    except (IndexError, ValueError, UnicodeDecodeError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{display(path)}: truncated or corrupt ONNX file") from None


# --- flatbuffers, just enough to walk Model.metadata and Model.buffers -------------------

def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _table(data: bytes, at: int) -> int:
    _u32(data, at)  # bounds check
    return at


def _field(data: bytes, table: int, index: int) -> int:
    """Absolute position of field `index` of the table at `table`, or 0 when absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return 0
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else 0


def _scalar(data: bytes, table: int, index: int, fmt: str, default):
    at = _field(data, table, index)
    return struct.unpack_from(fmt, data, at)[0] if at else default


def _indirect(data: bytes, at: int) -> int:
    return at + _u32(data, at)


def _vector_of_tables(data: bytes, table: int, index: int) -> list[int]:
    at = _field(data, table, index)
    if not at:
        return []
    vector = _indirect(data, at)
    return [_indirect(data, vector + 4 + 4 * i) for i in range(_u32(data, vector))]


def _string(data: bytes, table: int, index: int) -> str:
    at = _field(data, table, index)
    if not at:
        return ""
    start = _indirect(data, at)
    length = _u32(data, start)
    if start + 4 + length > len(data):
        raise IndexError("string past the end")
    return data[start + 4 : start + 4 + length].decode()


def _buffer_bytes(data: bytes, buffer: int) -> bytes:
    at = _field(data, buffer, 0)
    if at:
        vector = _indirect(data, at)
        length = _u32(data, vector)
        if vector + 4 + length > len(data):
            raise IndexError("buffer past the end")
        return data[vector + 4 : vector + 4 + length]
    offset = _scalar(data, buffer, 1, "<Q", 0)  # large models keep buffers after the flatbuffer
    size = _scalar(data, buffer, 2, "<Q", 0)
    if offset + size > len(data):
        raise IndexError("buffer past the end")
    return data[offset : offset + size]


# --- protobuf wire format, top-level fields only --------------------------------------

def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _protobuf_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) for each field; length-delimited values stay bytes."""
    fields, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("field past the end")
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("field past the end")
        fields.append((number, value))
    return fields


READERS = {"tflite": tflite_metadata, "onnx": onnx_metadata}  # kind -> its metadata entries
