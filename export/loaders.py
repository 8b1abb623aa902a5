"""What glimmer-export can start from, detected from the file rather than flagged.

- our ``.pt`` and the reference implementation's Lightning ``.ckpt`` (``glimmer.models.checkpoint``,
  read with ``weights_only=True``: no code runs);
- an ultralytics YOLOv8 ``.pt``, pruned ones included (``glimmer-compress`` saves them in
  ultralytics' own format). Read with ultralytics' own loader (:mod:`glimmer.models.yolo`), which
  **unpickles the file**: a pickle can run code, so only export ``.pt`` files from a source you
  trust;
- an ``.onnx`` carrying our metadata (or ultralytics'), for the on-target engine step.

The kind comes from :func:`glimmer.models.checkpoint.sniff_kind`, which reads the pickle's bytes
without unpickling, so an unknown file is refused before anything is loaded.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import onnx
import torch

from glimmer.models.checkpoint import load_checkpoint, sniff_kind
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import sha256_file
from glimmer.runtime.core.metadata import ModelMeta

from .onnx_export import load_onnx, read_metadata

KINDS = ("glimmer", "reference", "ultralytics", "onnx")


@dataclass
class Source:
    """A loaded export source.

    Attributes:
        kind: one of :data:`KINDS`.
        model: the PyTorch model in eval mode (None for an ONNX source).
        meta: the runtime metadata artifacts will carry (fp32, batch 1; callers override).
        onnx_model: the ONNX graph when ``kind == "onnx"``.
        qat: a quantisation-aware checkpoint's ``qat`` entry (its INT8 ranges), else None.
    """

    kind: str
    path: Path
    name: str
    meta: ModelMeta
    model: Optional[torch.nn.Module] = None
    onnx_model: Optional[onnx.ModelProto] = None
    info: Dict[str, Any] = field(default_factory=dict)
    qat: Optional[Dict[str, Any]] = None

    @property
    def task(self) -> str:
        return self.meta.task


def load_source(path: Path, img_size: Optional[int] = None) -> Source:
    """Load ``path`` as whichever kind it is; unknown files are a GlimmerError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise GlimmerError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return _from_onnx(path)
    kind = sniff_kind(path)
    if kind in ("glimmer", "reference"):
        return _from_glimmer(path, img_size)
    if kind == "ultralytics":
        return _from_ultralytics(path, img_size)
    raise GlimmerError(
        f"{path}: not a checkpoint glimmer-export knows (expected our .pt, a reference GlimmerNet "
        ".ckpt, an ultralytics YOLOv8 .pt or an .onnx)"
    )


def _square(size: Optional[int], default: Tuple[int, int]) -> Tuple[int, int]:
    return (int(size), int(size)) if size else (int(default[0]), int(default[1]))


def _from_glimmer(path: Path, img_size: Optional[int]) -> Source:
    ck = load_checkpoint(path)
    size = _square(img_size, ck.input_size)
    meta = ck.meta(input_size=size)
    return Source(
        kind=ck.kind,
        path=path,
        name=path.stem,
        meta=meta,
        model=ck.model.eval(),
        info={"arch": ck.arch, "provenance": ck.provenance},
        qat=ck.qat,
    )


def _from_ultralytics(path: Path, img_size: Optional[int]) -> Source:
    from glimmer.models.yolo import load_pt

    model, ckpt = load_pt(path)
    task = getattr(model, "task", "detect")
    if task != "detect":
        raise GlimmerError(f"{path}: ultralytics task {task!r} is not supported (detect only)")
    stride = int(max(float(s) for s in model.stride))
    train_imgsz = (ckpt.get("train_args") or {}).get("imgsz", 640)
    default = (train_imgsz, train_imgsz) if isinstance(train_imgsz, int) else tuple(train_imgsz)
    size = _square(img_size, default)
    if size[0] % stride or size[1] % stride:
        raise GlimmerError(
            f"--img-size {size[0]} is not a multiple of the detector's stride {stride}"
        )
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    meta = ModelMeta(
        task="detect",
        name=path.stem,
        class_names=[names[k] for k in sorted(names)],
        input_size=size,
        channel_order="RGB",
        scale=1.0 / 255.0,
        letterbox=True,
        pad_value=114,
        stride=stride,
        source_sha256=sha256_file(path),
        extra={
            "arch": "yolov8",
            "ultralytics_yaml": str(getattr(model, "yaml", {}).get("yaml_file", "")),
        },
    )
    return Source(
        kind="ultralytics",
        path=path,
        name=path.stem,
        meta=meta,
        model=model,
        info={"train_args_imgsz": train_imgsz},
    )


def prepare_detector(model: torch.nn.Module, dynamic_batch: bool) -> torch.nn.Module:
    """Fuse Conv+BN and switch the Detect head to export output ``[B, 4 + nc, anchors]`` (xywh)."""
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    for module in model.modules():
        if (
            type(module).__name__ in ("Detect", "Pose", "Segment", "OBB")
            or hasattr(module, "export")
            and hasattr(module, "format")
        ):
            module.export = True
            module.format = "onnx"
            module.dynamic = dynamic_batch
    return model.eval()


def _from_onnx(path: Path) -> Source:
    model = load_onnx(path)
    meta = read_metadata(model, str(path))
    name = path.name[: -len(".onnx")]
    for suffix in (".int8", ".fp16", ".fp32"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Source(kind="onnx", path=path, name=name, meta=meta, onnx_model=model)
