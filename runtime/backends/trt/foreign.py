"""TensorRT engines made by other tools: ``trtexec --saveEngine`` and ultralytics ``format=engine``.

Neither writes our sidecar, so the model metadata comes from elsewhere, first found wins:

1. ``--meta FILE``: our metadata JSON (a ModelMeta, or a glimmer sidecar), or an ONNX whose metadata
   to use (ours, or ultralytics' keys);
2. the ultralytics header: a 4-byte little-endian length and a JSON object written before the
   plan; its ``names`` / ``imgsz`` / ``stride`` / ``task`` / ``batch`` are read as from an
   ultralytics ONNX;
3. ``NAME.onnx`` beside ``NAME.engine`` (the ONNX trtexec was given, by convention).

The ultralytics header is always cut off: TensorRT sees only the plan. Without a sidecar nothing
records the engine's sha256, TensorRT version, GPU or precision: TensorRT itself refuses a plan from
another version or GPU, and reports say that the precision is what the metadata claims.
"""

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

#: a larger "header" is a plan whose first bytes happen to read as a small length
MAX_HEADER_BYTES = 16 << 20


@dataclass
class ForeignEngine:
    """What the runner needs to run an engine without a sidecar."""

    meta: ModelMeta
    plan_offset: int  # bytes before the plan (the ultralytics header), 0 for a bare plan
    source: str  # where the metadata came from, for reports
    tool: str  # "ultralytics" or "trtexec or another tool"


def ultralytics_header(engine_path: Path) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(plan offset, metadata) when the file starts with ultralytics' header, else None.

    A real plan starts with TensorRT's magic tag, which read as a length overruns the file or is
    not followed by JSON, so a bare plan is never mistaken for a header.
    """
    with open(str(engine_path), "rb") as f:
        head = f.read(4)
        size = f.seek(0, 2)
        if len(head) < 4:
            return None
        length = int.from_bytes(head, byteorder="little", signed=True)
        if not 0 < length <= min(size - 4, MAX_HEADER_BYTES):
            return None
        f.seek(4)
        raw = f.read(length)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return (4 + length, data) if isinstance(data, dict) else None


def _literal(value: Any) -> Any:
    """ultralytics writes typed JSON, but older exports stringified some values."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _ultralytics_precision(args: Mapping[str, Any]) -> str:
    quantize = str(args.get("quantize")).lower()  # newer exports; older ones set half / int8
    if args.get("int8") or quantize in ("8", "int8"):
        return "int8"
    if args.get("half") or quantize in ("16", "fp16"):
        return "fp16"
    return "fp32"


def ultralytics_meta(header: Mapping[str, Any], origin: str) -> ModelMeta:
    """Our ModelMeta from ultralytics' engine header (the keys its ONNX metadata also has)."""
    args = _literal(header.get("args")) or {}
    if not isinstance(args, dict):
        args = {}
    if int(_literal(header.get("channels", 3))) != 3:
        raise GlimmerError(f"{origin}: {header.get('channels')} input channels; glimmer feeds 3")
    names = _literal(header.get("names"))
    imgsz = _literal(header.get("imgsz"))
    if names is None or imgsz is None:
        raise GlimmerError(f"{origin}: the ultralytics header has no 'names' or 'imgsz'")
    if isinstance(names, dict):
        try:
            names = {int(k): v for k, v in names.items()}  # JSON object keys are strings
        except ValueError:
            raise GlimmerError(
                f"{origin}: ultralytics 'names' keys are not class indices"
            ) from None
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    props = {
        "names": repr(names),
        "imgsz": repr(list(imgsz)),
        "stride": str(_literal(header.get("stride")) or 32),
        "task": str(header.get("task") or "detect"),
        "batch": str(_literal(header.get("batch")) or 1),
        "description": str(header.get("description") or "ultralytics"),
    }
    # The head's layout (end-to-end [B, N, 6] or raw): the ONNX metadata's rule, one place.
    for key in ("end2end", "args"):
        if key in header:
            props[key] = str(header[key])
    meta = ModelMeta.from_props(props, origin)
    extra = dict(meta.extra, metadata_source="ultralytics engine header")
    if header.get("version"):
        extra["ultralytics_version"] = str(header["version"])
    return dataclasses.replace(
        meta,
        precision=_ultralytics_precision(args),
        batch=None if args.get("dynamic") else meta.batch,
        extra=extra,
    )


def load_meta_file(path: Path) -> ModelMeta:
    """``--meta FILE``: a ModelMeta JSON, a glimmer engine sidecar, or an ONNX with metadata."""
    path = Path(path)
    if not path.is_file():
        raise GlimmerError(f"--meta {path}: no such file")
    if path.suffix.lower() == ".onnx":
        return ModelMeta.from_props(read_onnx_metadata(path), origin=f"--meta {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GlimmerError(
            f"--meta {path}: not a JSON file ({exc}); give glimmer's metadata JSON or the ONNX "
            "the engine was built from"
        ) from None
    if isinstance(data, dict) and data.get("format") == trt_build.SIDECAR_FORMAT:
        data = data.get("meta")
    if not isinstance(data, dict):
        raise GlimmerError(f"--meta {path}: expected a JSON object of model metadata")
    return ModelMeta.from_dict(data, origin=f"--meta {path}")


def _has_metadata(props: Mapping[str, str]) -> bool:
    return METADATA_KEY in props or ("names" in props and "imgsz" in props)


def resolve(
    engine_path: Path, meta: Optional[ModelMeta] = None, meta_path: Optional[Path] = None
) -> ForeignEngine:
    """Metadata and plan offset of an engine without a sidecar, or one GlimmerError line saying
    which of the three sources to provide."""
    engine_path = Path(engine_path)
    header = ultralytics_header(engine_path)
    offset, tool = (header[0], "ultralytics") if header else (0, "trtexec or another tool")
    if meta is not None:
        return ForeignEngine(meta, offset, "metadata given by the caller", tool)
    if meta_path is not None:
        return ForeignEngine(load_meta_file(meta_path), offset, f"--meta {meta_path}", tool)
    if header:
        origin = f"{engine_path} (ultralytics header)"
        return ForeignEngine(
            ultralytics_meta(header[1], origin), offset, "ultralytics header", tool
        )
    onnx = engine_path.with_suffix(".onnx")
    props = read_onnx_metadata(onnx) if onnx.is_file() else {}
    if _has_metadata(props):
        return ForeignEngine(ModelMeta.from_props(props, str(onnx)), 0, onnx.name, tool)
    found = f"{onnx.name} beside it has no model metadata" if onnx.is_file() else "no metadata"
    raise GlimmerError(
        f"{engine_path}: {found} for this engine (no glimmer sidecar "
        f"{trt_build.sidecar_path(engine_path).name}, no ultralytics header); provide one of: "
        f"--meta FILE (glimmer's metadata JSON, or the ONNX it was built from), {onnx.name} "
        f"with glimmer-export's metadata beside it, or a sidecar by rebuilding it with "
        f"`glimmer-export {onnx.name} --fp16`"
    )
