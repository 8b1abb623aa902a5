"""The one place that talks to ultralytics 8.4.190: offline guards, loading, saving, counting.

Everything else in ``glimmer.train.compress`` goes through here, so version-specific facts (see
docs/yolo-compression.md, "ultralytics facts") live in one module:

- ``YOLO_OFFLINE=1`` is set before ultralytics is imported; :func:`offline` additionally replaces the
  two checks that would still try the network: the AMP check (downloads yolo26n.pt) and the font
  check inside ``check_det_dataset`` (HEAD request for Arial.ttf).
- A pruned model keeps ultralytics' own module classes and is saved in ultralytics' checkpoint
  layout (``{"model": ..., "train_args": ...}``), so ``YOLO(path)``, ``val`` and the exporter load it.
- A model is accepted only if it is a YOLOv8 detector: Conv / C2f / SPPF / Upsample / Concat layers
  and a v8 (legacy) Detect head; anything else fails with one clear line.
"""
import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

os.environ["YOLO_OFFLINE"] = "1"  # before any ultralytics import: its ONLINE flag is read at import

import torch  # noqa: E402
from torch import nn  # noqa: E402

from glimmer.runtime.core.errors import GlimmerError  # noqa: E402
from glimmer.runtime.core.files import atomic_path  # noqa: E402

ULTRALYTICS_VERSION = "8.4.190"
SCALES = ("n", "s", "m", "l", "x")


def ultralytics_modules():
    """Import ultralytics lazily (it is slow to import) and check the pinned version."""
    import ultralytics
    from ultralytics.nn.modules import SPPF, C2f, Concat, Conv, Detect
    from ultralytics.nn.tasks import DetectionModel

    if ultralytics.__version__ != ULTRALYTICS_VERSION:
        raise GlimmerError(f"ultralytics {ultralytics.__version__} is installed; glimmer-compress is "
                           f"written against {ULTRALYTICS_VERSION} (internal APIs move inside 8.4.x)")
    return {"Conv": Conv, "C2f": C2f, "SPPF": SPPF, "Concat": Concat, "Detect": Detect,
            "DetectionModel": DetectionModel}


def _amp_offline(model: nn.Module) -> bool:
    """AMP only on accelerators; ultralytics' own check would download yolo26n.pt to compare outputs."""
    try:
        return next(model.parameters()).device.type not in {"cpu", "mps"}
    except StopIteration:
        return False


def _font_offline(font: str = "Arial.ttf") -> Optional[Path]:
    """Use a font already on disk; never fetch one (plots fall back to PIL's default font)."""
    from ultralytics.utils import USER_CONFIG_DIR

    path = USER_CONFIG_DIR / Path(font).name
    return path if path.exists() else None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Run ultralytics with every network-touching check replaced by an offline equivalent."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod

    saved = (trainer_mod.check_amp, data_utils.check_font)
    trainer_mod.check_amp, data_utils.check_font = _amp_offline, _font_offline
    try:
        yield
    finally:
        trainer_mod.check_amp, data_utils.check_font = saved


def check_yolov8(model: Any, source: str) -> None:
    """Raise GlimmerError unless ``model`` is an ultralytics YOLOv8 detection model."""
    mods = ultralytics_modules()
    if type(model) is not mods["DetectionModel"]:
        raise GlimmerError(f"{source}: not a YOLOv8 detector (a {type(model).__name__}, not a DetectionModel)")
    allowed = (mods["Conv"], mods["C2f"], mods["SPPF"], mods["Concat"], nn.Upsample)
    for i, layer in enumerate(model.model[:-1]):
        if type(layer) not in allowed:  # exact types: C3k2 (YOLO11) subclasses C2f but is not v8
            raise GlimmerError(f"{source}: not a YOLOv8 detector (layer {i} is {type(layer).__name__})")
    head = model.model[-1]
    if type(head) is not mods["Detect"] or getattr(head, "one2one_cv2", None) is not None:
        raise GlimmerError(f"{source}: not a YOLOv8 detector (head is {type(head).__name__}, "
                           "expected the v8 Detect head)")
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
    """Load an ultralytics .pt as a float32 eval-mode model plus its checkpoint dict."""
    from glimmer.models.checkpoint import sniff_kind

    path = Path(path)
    if not path.is_file():  # ultralytics would try to download a missing name from GitHub
        raise GlimmerError(f"{path}: no such file")
    kind = sniff_kind(path)
    if kind != "ultralytics":
        what = {"glimmer": "a GlimmerNet checkpoint", "reference": "a reference TakuNet checkpoint"}
        raise GlimmerError(f"{path}: not a YOLOv8 detector ({what.get(kind, 'not an ultralytics checkpoint')})")
    ultralytics_modules()
    from ultralytics.nn.tasks import load_checkpoint

    try:
        model, ckpt = load_checkpoint(str(path))
    except (TypeError, RuntimeError, ModuleNotFoundError, AttributeError) as exc:
        raise GlimmerError(f"{path}: cannot load as an ultralytics checkpoint: "
                           f"{str(exc).strip().splitlines()[0][:200]}") from None
    check_yolov8(model, str(path))
    return model.float().eval(), ckpt


def save_detector(model: nn.Module, path: Path, glimmer: Dict[str, Any],
                  train_args: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` in ultralytics' checkpoint layout, atomically; ``glimmer`` records provenance."""
    import copy

    import ultralytics

    path = Path(path)
    if path.suffix != ".pt":
        raise GlimmerError(f"{path}: the output must end in .pt (ultralytics loads checkpoints by suffix)")
    snapshot = copy.deepcopy(model).float().eval()
    for attr in ("criterion",):  # training-only state, may hold a teacher
        if hasattr(snapshot, attr):
            setattr(snapshot, attr, None)
    for m in snapshot.modules():  # hooks would pickle whatever they close over
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    args = dict(train_args or getattr(model, "args", None) or {})
    args = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    ckpt = {"model": snapshot, "ema": None, "train_args": args, "version": ultralytics.__version__,
            "date": datetime.now(timezone.utc).isoformat(), "glimmer": glimmer,
            "license": "AGPL-3.0 (ultralytics)"}
    with atomic_path(path) as tmp:
        torch.save(ckpt, str(tmp))
    return path


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_costs(model: nn.Module, imgsz: int) -> List[Dict[str, Any]]:
    """Params and FLOPs (2 x multiply-accumulates of every conv, batch 1) per top-level layer.

    Counted with forward hooks on the convs, the same convention as ultralytics' GFLOPs (thop).
    """
    macs: Dict[int, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and name.startswith("model."):
            layer = int(name.split(".")[1])

            def hook(m, inp, out, layer=layer):
                kh, kw = m.kernel_size
                per_out = (m.in_channels // m.groups) * kh * kw
                macs[layer] = macs.get(layer, 0) + out.numel() * per_out

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = []
    for i, layer in enumerate(model.model):
        rows.append({"layer": i, "type": type(layer).__name__, "params": count_params(layer),
                     "flops": 2 * macs.get(i, 0)})
    return rows


def gflops(model: nn.Module, imgsz: int) -> float:
    return sum(r["flops"] for r in layer_costs(model, imgsz)) / 1e9
