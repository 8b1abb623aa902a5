"""The ``metadata_props`` of an ONNX file read straight from its protobuf wire format.

Every backend needs a model's metadata before it creates anything expensive (the TensorRT builder
keys its engine cache by it, ONNX Runtime picks its INT8 execution by it), and a Jetson with
TensorRT may have neither the onnx package nor ONNX Runtime: so the reader is ours, a few lines of
protobuf varints, in the floor of the runtime where every backend can import it.
"""

import mmap
from pathlib import Path
from typing import Dict, Tuple

from glimmer.runtime.core.errors import GlimmerError

_METADATA_PROPS = 14  # ModelProto.metadata_props in onnx.proto3


def _varint(buf, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Top-level (field number, wire type, value or (start, end)) of one protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("field runs past the end")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {wire}")


def read_onnx_metadata(path: Path) -> Dict[str, str]:
    """The ``metadata_props`` map of an ONNX file, without onnx or ONNX Runtime installed.

    Walks only the top level of the ModelProto wire format (the graph is skipped by its length,
    never parsed), so it costs the same for a 30K-parameter model and a 100 MB detector; this is
    what lets a Jetson with TensorRT but no ONNX Runtime read what an engine build needs.
    """
    path = Path(path)
    try:
        with open(str(path), "rb") as fh:
            if fh.seek(0, 2) == 0:
                raise GlimmerError(f"{path}: empty file, not an ONNX model")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                props: Dict[str, str] = {}
                for number, wire, span in _fields(buf, 0, len(buf)):
                    if number != _METADATA_PROPS or wire != 2:
                        continue
                    entry = {
                        n: bytes(buf[s:e]).decode("utf-8")
                        for n, w, (s, e) in ((n, w, v) for n, w, v in _fields(buf, *span) if w == 2)
                    }
                    props[entry.get(1, "")] = entry.get(2, "")
                return props
    except OSError as exc:
        raise GlimmerError(f"{path}: cannot read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise GlimmerError(f"{path}: not an ONNX model (unreadable protobuf)") from None
