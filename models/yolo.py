"""The one place that imports ultralytics (8.4.190): its offline guard, the import, loading a .pt
and its YOLO wrapper, so version-specific facts (docs/yolo-compression.md, "ultralytics facts") live
here.

- ``YOLO_OFFLINE=1`` is set when this module is imported, before ultralytics is (its ONLINE flag is
  read at import); :func:`offline` also replaces the two checks that would still try the network:
  the AMP check (downloads yolo26n.pt) and the font check inside ``check_det_dataset`` (HEAD request
  for Arial.ttf).
- A ``.pt`` is loaded with ultralytics' own loader, which **unpickles the file**: a pickle can run
  code, so load only files from a source you trust. A missing file is refused first (ultralytics
  would try to download a missing name from GitHub).

Exporting a detector is the export layer's (glimmer-export: Conv+BN fused, Detect head in export
mode, torch.onnx), so there is one ONNX path for detectors. Nothing here imports torch or
ultralytics until a function needs them.
"""

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError

os.environ["YOLO_OFFLINE"] = "1"  # never let ultralytics reach for the network

ULTRALYTICS_VERSION = "8.4.190"
INSTALL = "pip install 'glimmer-edge[train]'"


def import_ultralytics(context: str = ""):
    """The ultralytics module, or a GlimmerError (``context`` first) that says how to install it."""
    try:
        import ultralytics
    except ImportError:
        raise GlimmerError(f"{context}ultralytics is not installed ({INSTALL})") from None
    return ultralytics


def ultralytics_modules() -> Dict[str, Any]:
    """The module classes a YOLOv8 detector is made of, after checking the pinned version (pruning
    and training reach into ultralytics' internals, which move inside 8.4.x)."""
    ultralytics = import_ultralytics()
    from ultralytics.nn.modules import SPPF, C2f, Concat, Conv, Detect
    from ultralytics.nn.tasks import DetectionModel

    if ultralytics.__version__ != ULTRALYTICS_VERSION:
        raise GlimmerError(
            f"ultralytics {ultralytics.__version__} is installed; glimmer-compress is "
            f"written against {ULTRALYTICS_VERSION} (internal APIs move inside 8.4.x)"
        )
    return {
        "Conv": Conv,
        "C2f": C2f,
        "SPPF": SPPF,
        "Concat": Concat,
        "Detect": Detect,
        "DetectionModel": DetectionModel,
    }


def detection_trainer():
    """ultralytics' ``DetectionTrainer`` class (version checked), for glimmer-compress to
    subclass."""
    ultralytics_modules()
    from ultralytics.models.yolo.detect import DetectionTrainer

    return DetectionTrainer


def _amp_offline(model: Any) -> bool:
    """AMP only on accelerators; ultralytics' own check would download yolo26n.pt to compare
    outputs."""
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
    import_ultralytics()
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod

    saved = (trainer_mod.check_amp, data_utils.check_font)
    trainer_mod.check_amp, data_utils.check_font = _amp_offline, _font_offline
    try:
        yield
    finally:
        trainer_mod.check_amp, data_utils.check_font = saved


def load_pt(path: Path) -> Tuple[Any, Dict[str, Any]]:
    """(model in float32 eval mode on the CPU, checkpoint dict) of an ultralytics ``.pt``."""
    path = Path(path)
    if not path.is_file():
        raise GlimmerError(f"{path}: no such file")
    import_ultralytics(f"{path}: is an ultralytics checkpoint, but ")
    from ultralytics.nn.tasks import load_checkpoint

    try:
        model, ckpt = load_checkpoint(str(path), device="cpu")
    except Exception as exc:  # ultralytics raises TypeError/ModuleNotFoundError/... for odd files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GlimmerError(f"{path}: cannot load as an ultralytics checkpoint: {first}") from None
    return model.float().eval(), ckpt


def yolo(path: Path, task: str = "detect") -> Any:
    """ultralytics' ``YOLO`` wrapper of a ``.pt`` or ``.onnx`` (its predictor and validator)."""
    import_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(path), task=task)
