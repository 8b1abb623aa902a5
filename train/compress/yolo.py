"""YOLOv8 for glimmer-compress: which models qualify, building, loading and saving them, their cost.

ultralytics itself (the offline guard, the import, loading a .pt) is :mod:`glimmer.models.yolo`'s;
this module holds what compression adds on top:

- A pruned model keeps ultralytics' own module classes and is saved in ultralytics' checkpoint
  layout (``{"model": ..., "train_args": ...}``), so ``YOLO(path)``, ``val`` and glimmer-export
  load it.
- A model is accepted only if it is a YOLOv8 detector: Conv / C2f / SPPF / Upsample / Concat layers
  and a v8 (legacy) Detect head; anything else fails with one clear line.
- Params and FLOPs per layer, with :func:`glimmer.models.macs.count_macs` (FLOPs = 2 x MACs, the
  convention of ultralytics' GFLOPs).
"""

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from glimmer.models.macs import count_macs
from glimmer.models.yolo import import_ultralytics, load_pt, ultralytics_modules
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path

SCALES = ("n", "s", "m", "l", "x")


def check_yolov8(model: Any, source: str) -> None:
    """Raise GlimmerError unless ``model`` is an ultralytics YOLOv8 detection model."""
    mods = ultralytics_modules()
    if type(model) is not mods["DetectionModel"]:
        raise GlimmerError(
            f"{source}: not a YOLOv8 detector (a {type(model).__name__}, not a DetectionModel)"
        )
    allowed = (mods["Conv"], mods["C2f"], mods["SPPF"], mods["Concat"], nn.Upsample)
    for i, layer in enumerate(model.model[:-1]):
        if type(layer) not in allowed:  # exact types: C3k2 (YOLO11) subclasses C2f but is not v8
            raise GlimmerError(
                f"{source}: not a YOLOv8 detector (layer {i} is {type(layer).__name__})"
            )
    head = model.model[-1]
    if type(head) is not mods["Detect"] or getattr(head, "one2one_cv2", None) is not None:
        raise GlimmerError(
            f"{source}: not a YOLOv8 detector (head is {type(head).__name__}, "
            "expected the v8 Detect head)"
        )
    if not isinstance(head.cv3[0][0], mods["Conv"]):
        raise GlimmerError(f"{source}: not a YOLOv8 detector (its Detect head is the v11/26 style)")


def build_detector(cfg: str, nc: int) -> nn.Module:
    """A fresh YOLOv8 DetectionModel from ultralytics' packaged yaml (e.g. ``yolov8m.yaml``)."""
    mods = ultralytics_modules()
    name = Path(cfg).name
    stem = name[:-5] if name.endswith(".yaml") else name
    if not (stem.startswith("yolov8") and stem[6:] in SCALES) and not Path(cfg).is_file():
        raise GlimmerError(f"--model {cfg}: expected yolov8n|s|m|l|x.yaml or a .pt checkpoint")
    try:
        model = mods["DetectionModel"](cfg, nc=nc, verbose=False)
    except FileNotFoundError as exc:
        raise GlimmerError(f"--model {cfg}: {exc}") from None
    check_yolov8(model, cfg)
    return model


def load_detector(path: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a YOLOv8 detector's .pt as a float32 eval-mode model plus its checkpoint dict."""
    from glimmer.models.checkpoint import sniff_kind

    path = Path(path)
    if not path.is_file():  # ultralytics would try to download a missing name from GitHub
        raise GlimmerError(f"{path}: no such file")
    kind = sniff_kind(path)
    if kind != "ultralytics":
        what = {"glimmer": "a GlimmerNet checkpoint", "reference": "a reference TakuNet checkpoint"}
        raise GlimmerError(
            f"{path}: not a YOLOv8 detector ({what.get(kind, 'not an ultralytics checkpoint')})"
        )
    ultralytics_modules()  # the pinned version, before its loader runs
    model, ckpt = load_pt(path)
    check_yolov8(model, str(path))
    return model, ckpt


def save_detector(
    model: nn.Module,
    path: Path,
    glimmer: Dict[str, Any],
    train_args: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``model`` in ultralytics' checkpoint layout, atomically; ``glimmer`` records
    provenance."""
    import copy

    path = Path(path)
    if path.suffix != ".pt":
        raise GlimmerError(
            f"{path}: the output must end in .pt (ultralytics loads checkpoints by suffix)"
        )
    snapshot = copy.deepcopy(model).float().eval()
    for attr in ("criterion",):  # training-only state, may hold a teacher
        if hasattr(snapshot, attr):
            setattr(snapshot, attr, None)
    for m in snapshot.modules():  # hooks would pickle whatever they close over
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    args = dict(train_args or getattr(model, "args", None) or {})
    args = {
        k: v
        for k, v in args.items()
        if isinstance(v, (str, int, float, bool, type(None), list, tuple))
    }
    ckpt = {
        "model": snapshot,
        "ema": None,
        "train_args": args,
        "version": import_ultralytics().__version__,
        "date": datetime.now(timezone.utc).isoformat(),
        "glimmer": glimmer,
        "license": "AGPL-3.0 (ultralytics)",
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, str(tmp))
    return path


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_costs(model: nn.Module, imgsz: int) -> List[Dict[str, Any]]:
    """Params and FLOPs (2 x multiply-accumulates, batch 1) per top-level layer ``model.<i>``."""

    def layer(name: str) -> Optional[int]:
        parts = name.split(".")
        return int(parts[1]) if parts[0] == "model" and len(parts) > 1 else None

    _, macs = count_macs(model, imgsz, part=layer)
    return [
        {
            "layer": i,
            "type": type(m).__name__,
            "params": count_params(m),
            "flops": 2 * macs.get(i, 0),
        }
        for i, m in enumerate(model.model)
    ]


def gflops(model: nn.Module, imgsz: int) -> float:
    return sum(r["flops"] for r in layer_costs(model, imgsz)) / 1e9
