"""Accuracy of a deployed model through the runtime's own preprocessing, backend and postprocess.

- Classifier: weighted F1 (the GlimmerNet paper's metric), accuracy and per-class figures over a
  labelled folder ``<root>/<Class>/<image>`` (glimmer.runtime.tools.metrics). :func:`load_labelled`
  reads and preprocesses a folder once and :func:`score` scores any model on it (a Backend, an ONNX
  Runtime session or a callable), which is how the export compares FP32 and INT8 sessions.
- Detector: mAP50 and mAP50-95 (COCO's AP averaged over IoU 0.50:0.05:0.95, 101-point interpolated
  precision) by faster-coco-eval, a maintained C++ implementation of the COCO evaluator, on a
  YOLO-format val set: a ``data.yaml`` (``path`` / ``val`` / ``names``) or a folder with
  ``images/`` and ``labels/``; each label line is ``class cx cy w h`` normalised to the image
  (ultralytics' format). Boxes come from the runtime's Detector with ultralytics' validation
  settings (conf 0.001, IoU 0.7, up to 300 detections per image), so the figure is what the drone
  sees. COCO's evaluator counts only 100 detections per image (and class) by default, which cuts
  recall on crowded aerial frames (VisDrone has hundreds of pedestrians in one): it counts
  ``max_det`` here, as ``yolo val`` does.

  One mAP: on the same boxes this equals ultralytics' own metric (``yolo val``, which the
  compression report uses) to within ``MAP_AGREEMENT`` (tests/train/compress/test_map_agreement.py):
  both match detections greedily by score to the best unclaimed box, and differ only in how they
  read the precision-recall curve at 101 recall points (COCO takes the precision at the first point
  reaching each recall, a step; ultralytics interpolates linearly and integrates with the
  trapezoid rule). A figure here and one from ``yolo val`` still differ by the boxes: ultralytics
  validates the PyTorch model on rectangular batches, glimmer the deployed model on its fixed
  letterboxed input.

Unreadable images (truncated, not an image) are skipped and counted, for both tasks: a scan of real
data has a few, and one bad file should not stop an accuracy figure; the report says how many
(``unreadable``) and which (``unreadable_files``), and a set with no readable image is an error.

faster-coco-eval and PyYAML are imported only when a detector is evaluated.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.backends.base import Backend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import labelled_images, list_images, read_image
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.detect import BOX_KEYS, Detector, DetectSettings
from glimmer.runtime.tools.metrics import classification_report

#: ultralytics' validation thresholds: low conf so the precision-recall curve is complete
VAL_SETTINGS = DetectSettings(conf=0.001, iou=0.7, max_det=300)
#: what a detector's map50 / map50_95 are, recorded in every report
MAP_DEFINITION = "COCO mAP (faster-coco-eval, 101-point, up to {} detections per image)"
#: how close this mAP and ultralytics' are on the same boxes: the largest gap measured on 30
#: generated sets was 0.0045 (mAP50) and 0.0033 (mAP50-95), medians 0.0016 and 0.0012
MAP_AGREEMENT = 0.006
#: batch size for a model whose batch is free (a Backend runs one image at a time, as deployed)
DEFAULT_BATCH = 8
GroundTruth = List[Tuple[int, List[float]]]  # (class, [x1, y1, x2, y2] in pixels)
Detections = List[Tuple[int, float, List[float]]]  # (class, score, [x1, y1, x2, y2])


def readable(paths: Iterable[Path], skipped: List[Path]) -> Iterator[Tuple[Path, np.ndarray]]:
    """(path, BGR image) of each decodable file; the others are appended to ``skipped``."""
    for path in paths:
        image = read_image(path)
        if image is None:
            skipped.append(path)
            continue
        yield path, image


def _unreadable(skipped: Sequence[Path]) -> Dict[str, Any]:
    return {"unreadable": len(skipped), "unreadable_files": [str(p) for p in skipped[:10]]}


def _infer_one(backend: Backend, pre: Preprocessor, image: np.ndarray):
    batch, transforms = pre([image])
    return backend.infer(batch.astype(np.dtype(backend.inputs[0].dtype), copy=False)), transforms


# -- classifiers ----------------------------------------------------------------------------------
@dataclass
class LabelledSet:
    """A labelled folder (``<class>/<image>``) read and preprocessed once, as deployment does."""

    inputs: np.ndarray  # N x C x H x W float32
    truth: List[int]
    names: List[str]
    unreadable: int
    skipped: List[Path] = field(default_factory=list)


def _labelled(
    meta: ModelMeta, root: Path, option: Optional[str]
) -> Tuple[List[Path], List[int], List[str]]:
    try:
        return labelled_images(Path(root), meta.class_names)
    except GlimmerError as exc:
        if option:
            raise GlimmerError(f"{option} {exc}") from None
        raise


def _preprocessed(
    meta: ModelMeta, paths: List[Path], labels: List[int], skipped: List[Path]
) -> Iterator[Tuple[np.ndarray, int]]:
    pre, label_of = Preprocessor(meta), dict(zip(paths, labels))
    for path, image in readable(paths, skipped):
        yield pre.image(image)[0], label_of[path]


def _no_images(root: Path, option: Optional[str]) -> GlimmerError:
    return GlimmerError(f"{option + ' ' if option else ''}{root}: no readable images")


def load_labelled(meta: ModelMeta, root: Path, option: Optional[str] = None) -> LabelledSet:
    """Read and preprocess ``root`` once; its class folders must be the model's classes. Errors name
    ``option`` (the flag that gave the folder) when there is one."""
    paths, labels, names = _labelled(meta, root, option)
    skipped: List[Path] = []
    pairs = list(_preprocessed(meta, paths, labels, skipped))
    if not pairs:
        raise _no_images(root, option)
    return LabelledSet(
        np.stack([x for x, _ in pairs]), [y for _, y in pairs], names, len(skipped), skipped
    )


def _runner(model: Any) -> Tuple[Callable[[np.ndarray], Any], int, bool]:
    """(batch -> logits, batch size, whether that size is fixed) of a Backend, an ONNX Runtime
    session (anything with ``get_inputs`` and ``run``) or a callable."""
    if isinstance(model, Backend):
        spec = model.inputs[0]
        dtype, fixed = np.dtype(spec.dtype), spec.shape[0]
        return (
            (lambda x: model.infer(x.astype(dtype, copy=False))[0]),
            fixed or 1,
            fixed is not None,
        )
    if hasattr(model, "get_inputs") and hasattr(model, "run"):
        spec = model.get_inputs()[0]
        fixed = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
        return (
            (lambda x: model.run(None, {spec.name: x})[0]),
            fixed or DEFAULT_BATCH,
            fixed is not None,
        )
    if callable(model):
        return model, DEFAULT_BATCH, False
    raise TypeError(
        f"cannot score a {type(model).__name__}: give a Backend, a session or a callable"
    )


def classify(model: Any, pairs: Iterable[Tuple[np.ndarray, int]]) -> Tuple[List[int], List[int]]:
    """(truth, top-1 prediction) over (preprocessed input, label) pairs, a batch at a time; a fixed
    batch is filled by repeating the last input."""
    run, size, fixed = _runner(model)
    truth: List[int] = []
    predicted: List[int] = []
    chunk: List[np.ndarray] = []

    def flush() -> None:
        n = len(chunk)
        batch = np.stack(chunk + [chunk[-1]] * (size - n if fixed else 0))
        logits = np.asarray(run(batch)).reshape(len(batch), -1)
        predicted.extend(int(v) for v in logits.argmax(1)[:n])
        chunk.clear()

    for x, label in pairs:
        chunk.append(x)
        truth.append(label)
        if len(chunk) == size:
            flush()
    if chunk:
        flush()
    return truth, predicted


def predict_labels(model: Any, inputs: Iterable[np.ndarray]) -> List[int]:
    """Top-1 class of each preprocessed input."""
    return classify(model, ((x, -1) for x in inputs))[1]


def score(model: Any, data: LabelledSet) -> Dict[str, Any]:
    """Weighted F1, accuracy and per-class F1 of one model on a set read once."""
    truth, predicted = classify(model, zip(data.inputs, data.truth))
    report = classification_report(truth, predicted, data.names)
    return {
        "f1_weighted": report["f1_weighted"],
        "accuracy": report["accuracy"],
        "per_class_f1": {k: v["f1"] for k, v in report["per_class"].items()},
    }


def evaluate_classifier(backend: Backend, root: Path) -> Dict[str, Any]:
    """Weighted F1, accuracy and per-class precision / recall / F1 of an activated classifier; the
    images stream through (a folder larger than memory is fine)."""
    paths, labels, names = _labelled(backend.meta, root, None)
    skipped: List[Path] = []
    truth, predicted = classify(backend, _preprocessed(backend.meta, paths, labels, skipped))
    if not truth:
        raise _no_images(root, None)
    report = classification_report(truth, predicted, names)
    report.update(_unreadable(skipped), data=str(root))
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
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, suffix
    ``.txt``."""
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
            raise GlimmerError(
                f"{data}: not a YOLO val set (expected data.yaml, or images/ and labels/)"
            )
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
            raise GlimmerError(
                f"{path}:{number}: expected 'class cx cy w h', got {line!r}"
            ) from None
        if not 0 <= cls < num_classes:
            raise GlimmerError(
                f"{path}:{number}: class {cls} is outside the model's {num_classes} classes"
            )
        boxes.append(
            (
                cls,
                [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ],
            )
        )
    return boxes


# -- COCO mAP -------------------------------------------------------------------------------------
def coco_map(
    ground_truth: Sequence[GroundTruth],
    detections: Sequence[Detections],
    class_names: Sequence[str],
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
    max_det: int = VAL_SETTINGS.max_det,
) -> Dict[str, Any]:
    """mAP50 and mAP50-95 (COCO rules, faster-coco-eval) of per-image boxes in xyxy pixels.

    Args:
        ground_truth, detections: one list per image, same order.
        sizes: (height, width) per image (only recorded in the COCO dict).
        max_det: detections counted per image (and class), the Detector's ``max_det``.
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise GlimmerError(
            "detector mAP needs faster-coco-eval (pip install 'glimmer-edge[check]')"
        ) from None
    if len(ground_truth) != len(detections):
        raise ValueError("ground_truth and detections must have one entry per image")
    images, annotations, results = [], [], []
    for i, (gts, dets) in enumerate(zip(ground_truth, detections), 1):
        h, w = sizes[i - 1] if sizes else (1, 1)
        images.append({"id": i, "height": int(h), "width": int(w)})
        for cls, (x1, y1, x2, y2) in gts:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(cls),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for cls, score, (x1, y1, x2, y2) in dets:
            results.append(
                {
                    "image_id": i,
                    "category_id": int(cls),
                    "score": float(score),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    out: Dict[str, Any] = {
        "images": len(images),
        "objects": len(annotations),
        "detections": len(results),
        "map_definition": MAP_DEFINITION.format(max_det),
    }
    if not annotations:
        raise GlimmerError("the val set has no labelled objects: mAP is undefined")
    if not results:
        return dict(out, map50=0.0, map50_95=0.0)
    quiet = lambda *a, **k: None  # noqa: E731 - the evaluator's progress chatter
    gt = COCO(
        {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)],
        },
        print_function=quiet,
    )
    evaluator = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=quiet)
    # COCO's default is [1, 10, 100]; the AP stats are read at the last entry, so it must be
    # max_det (ascending: faster-coco-eval sorts the list)
    evaluator.params.maxDets = [d for d in (1, 10) if d < max_det] + [int(max_det)]
    evaluator.run()
    if evaluator.params.maxDets[-1] != max_det:
        raise RuntimeError(f"faster-coco-eval counted {evaluator.params.maxDets[-1]} detections")
    # stats[0]: AP@[.50:.95], stats[1]: AP@.50 (all areas, at maxDets[-1]); -1 means undefined
    return dict(
        out, map50=max(float(evaluator.stats[1]), 0.0), map50_95=max(float(evaluator.stats[0]), 0.0)
    )


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
    skipped: List[Path] = []
    for path, image in readable(images, skipped):
        h, w = image.shape[:2]
        sizes.append((h, w))
        ground_truth.append(read_labels(label_path(path), w, h, meta.num_classes))
        outputs, transforms = _infer_one(backend, pre, image)
        pred = detector(outputs, transforms)[0]
        detections.append(
            [
                (d["class"], d["confidence"], [d["box"][k] for k in BOX_KEYS])
                for d in pred["detections"]
            ]
        )
    if not sizes:
        raise _no_images(Path(data), None)
    report = coco_map(ground_truth, detections, meta.class_names, sizes, detector.settings.max_det)
    report.update(_unreadable(skipped), data=str(data))
    return report


def evaluate(backend: Backend, data: Path) -> Dict[str, Any]:
    """The task's accuracy report, chosen from the model's metadata."""
    if backend.meta.task == "classify":
        return evaluate_classifier(backend, data)
    return evaluate_detector(backend, data)
