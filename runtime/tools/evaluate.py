"""Accuracy of a deployed model through the runtime's own preprocessing, backend and postprocess.

- Classifier: weighted F1 (the GlimmerNet paper's metric), accuracy and per-class figures over a
  labelled folder ``<root>/<Class>/<image>`` (glimmer.runtime.tools.metrics).
- Detector: mAP50 and mAP50-95 (COCO's AP averaged over IoU 0.50:0.05:0.95, 101-point interpolated
  precision, up to 100 detections per image) by faster-coco-eval, a maintained C++ implementation
  of the COCO evaluator, on a YOLO-format val set: a ``data.yaml`` (``path`` / ``val`` /
  ``names``) or a folder with ``images/`` and ``labels/``; each label line is ``class cx cy w h``
  normalised to the image (ultralytics' format). Boxes come from the runtime's Detector with
  ultralytics' validation settings (conf 0.001, IoU 0.7), so the figure is what the drone sees.

faster-coco-eval and PyYAML are imported only when a detector is evaluated.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.backends.base import Backend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import labelled_images, list_images, read_image
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.detect import Detector, DetectSettings
from glimmer.runtime.tools.metrics import classification_report

#: ultralytics' validation thresholds: low conf so the precision-recall curve is complete
VAL_SETTINGS = DetectSettings(conf=0.001, iou=0.7, max_det=300)
GroundTruth = List[Tuple[int, List[float]]]  # (class, [x1, y1, x2, y2] in pixels)
Detections = List[Tuple[int, float, List[float]]]  # (class, score, [x1, y1, x2, y2])


def _infer_one(backend: Backend, pre: Preprocessor, image: np.ndarray):
    batch, transforms = pre([image])
    return backend.infer(batch.astype(np.dtype(backend.inputs[0].dtype), copy=False)), transforms


def evaluate_classifier(backend: Backend, root: Path) -> Dict[str, Any]:
    """Weighted F1, accuracy and per-class precision / recall / F1 of an activated classifier."""
    meta = backend.meta
    paths, labels, names = labelled_images(Path(root), meta.class_names)
    pre = Preprocessor(meta)
    predicted: List[int] = []
    for path in paths:
        image = read_image(path)
        if image is None:
            raise GlimmerError(f"{path}: cannot decode the image (remove it or replace it)")
        outputs, _ = _infer_one(backend, pre, image)
        predicted.append(int(np.asarray(outputs[0]).reshape(-1).argmax()))
    report = classification_report(labels, predicted, names)
    report["data"] = str(root)
    return report


# -- YOLO-format val sets -------------------------------------------------------------------------
def _yaml(path: Path) -> Dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise GlimmerError(f"{path}: reading data.yaml needs PyYAML (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GlimmerError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise GlimmerError(f"{path}: expected a mapping with 'val' and 'names'")
    return data


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def yolo_val_set(data: Path) -> Tuple[List[Path], Optional[List[str]]]:
    """(images, class names or None) of a data.yaml's ``val`` split, or of ``<data>/images``."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".yaml", ".yml"):
        spec = _yaml(data)
        if "val" not in spec:
            raise GlimmerError(f"{data}: key 'val' is missing")
        root = Path(spec.get("path") or data.parent)
        root = root if root.is_absolute() else data.parent / root
        vals = spec["val"] if isinstance(spec["val"], list) else [spec["val"]]
        images: List[Path] = []
        for val in vals:
            folder = root / str(val)
            if not folder.is_dir():
                raise GlimmerError(f"{data}: val folder {folder} does not exist")
            images += list_images(folder)
        names = spec.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        return images, [str(n) for n in names] if names else None
    if data.is_dir():
        folder = data / "images" if (data / "images").is_dir() else data
        if not (data / "labels").is_dir() and folder == data:
            raise GlimmerError(f"{data}: not a YOLO val set (expected data.yaml, or images/ and labels/)")
        return list_images(folder), None
    raise GlimmerError(f"{data}: no such file or folder")


def read_labels(path: Path, width: int, height: int, num_classes: int) -> GroundTruth:
    """YOLO label lines -> (class, xyxy pixels); a missing file is an image with no objects."""
    if not path.is_file():
        return []
    boxes: GroundTruth = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, TypeError):
            raise GlimmerError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}") from None
        if not 0 <= cls < num_classes:
            raise GlimmerError(f"{path}:{number}: class {cls} is outside the model's {num_classes} classes")
        boxes.append((cls, [(cx - w / 2) * width, (cy - h / 2) * height,
                            (cx + w / 2) * width, (cy + h / 2) * height]))
    return boxes


# -- COCO mAP -------------------------------------------------------------------------------------
def coco_map(ground_truth: Sequence[GroundTruth], detections: Sequence[Detections],
             class_names: Sequence[str], sizes: Optional[Sequence[Tuple[int, int]]] = None
             ) -> Dict[str, Any]:
    """mAP50 and mAP50-95 (COCO rules, faster-coco-eval) of per-image boxes in xyxy pixels.

    Args:
        ground_truth, detections: one list per image, same order.
        sizes: (height, width) per image (only recorded in the COCO dict).
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise GlimmerError("detector mAP needs faster-coco-eval (pip install 'glimmer-edge[check]')") from None
    if len(ground_truth) != len(detections):
        raise ValueError("ground_truth and detections must have one entry per image")
    images, annotations, results = [], [], []
    for i, (gts, dets) in enumerate(zip(ground_truth, detections), 1):
        h, w = sizes[i - 1] if sizes else (1, 1)
        images.append({"id": i, "height": int(h), "width": int(w)})
        for cls, (x1, y1, x2, y2) in gts:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0})
        for cls, score, (x1, y1, x2, y2) in dets:
            results.append({"image_id": i, "category_id": int(cls), "score": float(score),
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    out: Dict[str, Any] = {"images": len(images), "objects": len(annotations),
                           "detections": len(results)}
    if not annotations:
        raise GlimmerError("the val set has no labelled objects: mAP is undefined")
    if not results:
        return dict(out, map50=0.0, map50_95=0.0)
    quiet = lambda *a, **k: None  # noqa: E731 - the evaluator's progress chatter
    gt = COCO({"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)]},
              print_function=quiet)
    evaluator = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=quiet)
    evaluator.run()
    # stats[0]: AP@[.50:.95], stats[1]: AP@.50 (all areas, 100 detections); -1 means undefined
    return dict(out, map50=max(float(evaluator.stats[1]), 0.0), map50_95=max(float(evaluator.stats[0]), 0.0))


def evaluate_detector(backend: Backend, data: Path) -> Dict[str, Any]:
    """mAP50 / mAP50-95 of an activated detector over a YOLO-format val set."""
    meta = backend.meta
    images, names = yolo_val_set(Path(data))
    if not images:
        raise GlimmerError(f"{data}: the val set holds no images")
    if names is not None and len(names) != meta.num_classes:
        raise GlimmerError(f"{data}: names {len(names)} classes, the model {meta.num_classes}")
    pre, detector = Preprocessor(meta), Detector(meta, VAL_SETTINGS)
    ground_truth: List[GroundTruth] = []
    detections: List[Detections] = []
    sizes: List[Tuple[int, int]] = []
    for path in images:
        image = read_image(path)
        if image is None:
            raise GlimmerError(f"{path}: cannot decode the image (remove it or replace it)")
        h, w = image.shape[:2]
        sizes.append((h, w))
        ground_truth.append(read_labels(label_path(path), w, h, meta.num_classes))
        outputs, transforms = _infer_one(backend, pre, image)
        pred = detector(outputs, transforms)[0]
        detections.append([(d["index"], d["score"], d["box"]) for d in pred["detections"]])
    report = coco_map(ground_truth, detections, meta.class_names, sizes)
    report["data"] = str(data)
    return report


def evaluate(backend: Backend, data: Path) -> Dict[str, Any]:
    """The task's accuracy report, chosen from the model's metadata."""
    if backend.meta.task == "classify":
        return evaluate_classifier(backend, data)
    return evaluate_detector(backend, data)
