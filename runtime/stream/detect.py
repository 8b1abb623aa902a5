"""Detection postprocessing for YOLOv8-style heads, in numpy: decode, threshold, NMS, rescale.

The exported head (ultralytics' layout) is ``[B, 4 + nc, N]``: per anchor a box as centre x,
centre y, width, height in network-input pixels, then one sigmoid score per class (no objectness).
Boxes are kept above a confidence threshold, reduced by class-aware greedy non-maximum suppression
(each class suppresses only itself, done in one pass by offsetting each class's boxes far apart, the
trick torchvision's ``batched_nms`` and ultralytics use), and mapped back through the letterbox to
frame pixels.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import LetterboxTransform


@dataclass
class DetectSettings:
    """Attributes:
    conf: minimum class score kept.
    iou: IoU above which a lower-scored box of the same class is suppressed.
    max_det: boxes kept per frame after NMS.
    max_candidates: highest-scoring boxes that enter NMS (bounds its quadratic cost).
    agnostic: suppress across classes too.
    """

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    max_candidates: int = 30000
    agnostic: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise GlimmerError(f"detect conf must be in [0, 1], got {self.conf}")
        if not 0.0 < self.iou <= 1.0:
            raise GlimmerError(f"detect iou must be in (0, 1], got {self.iou}")
        if self.max_det < 1:
            raise GlimmerError(f"detect max_det must be at least 1, got {self.max_det}")


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    half_w, half_h = boxes[..., 2] / 2.0, boxes[..., 3] / 2.0
    out[..., 0] = boxes[..., 0] - half_w
    out[..., 1] = boxes[..., 1] - half_h
    out[..., 2] = boxes[..., 0] + half_w
    out[..., 3] = boxes[..., 1] + half_h
    return out


def box_iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against ``[M, 4]`` boxes."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(
        others[:, 3] - others[:, 1], 0, None
    )
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices kept, highest score first; a box goes when its IoU with a kept one
    exceeds ``iou_threshold`` (equal IoU survives, as in torchvision)."""
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou_one(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Shift each class by more than the whole coordinate range so classes cannot overlap.
    span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
    return nms(boxes + (classes.astype(np.float64) * span)[:, None], scores, iou_threshold)


class Detector:
    """Decodes ``[B, 4 + nc, N]`` into per-frame boxes in frame coordinates."""

    task = "detect"

    def __init__(self, meta: ModelMeta, settings: Optional[DetectSettings] = None) -> None:
        self.meta = meta
        self.settings = settings or DetectSettings()
        self.class_names = list(meta.class_names)

    def reset(self) -> None:
        """Detection keeps no state across frames."""

    def _layout(self, out: np.ndarray) -> np.ndarray:
        """``[B, 4 + nc, N]``; a transposed ``[B, N, 4 + nc]`` head is accepted too."""
        nc = len(self.class_names)
        if out.ndim == 2:
            out = out[None]
        if out.ndim != 3:
            raise GlimmerError(
                "detection output must be [batch, 4 + classes, anchors], "
                f"got shape {list(out.shape)}"
            )
        if out.shape[1] == 4 + nc:
            return out
        if out.shape[2] == 4 + nc:
            return out.transpose(0, 2, 1)
        raise GlimmerError(
            f"detection output shape {list(out.shape)} does not match 4 + {nc} "
            "classes from the metadata"
        )

    def decode(self, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame's ``[4 + nc, N]`` -> (xyxy boxes in input pixels, scores, class ids), NMS
        done."""
        s = self.settings
        pred = pred.astype(np.float32, copy=False)
        class_scores = pred[4:]
        cls = class_scores.argmax(axis=0)
        score = class_scores[cls, np.arange(pred.shape[1])]
        mask = score >= s.conf
        boxes, score, cls = xywh_to_xyxy(pred[:4, mask].T), score[mask], cls[mask]
        if score.size > s.max_candidates:
            top = np.argsort(-score, kind="stable")[: s.max_candidates]
            boxes, score, cls = boxes[top], score[top], cls[top]
        if s.agnostic:
            keep = nms(boxes, score, s.iou)
        else:
            keep = batched_nms(boxes, score, cls, s.iou)
        keep = keep[: s.max_det]
        return boxes[keep], score[keep], cls[keep]

    def __call__(
        self, outputs: Sequence[np.ndarray], transforms: Sequence[LetterboxTransform]
    ) -> List[Dict[str, Any]]:
        """Outputs of one batch -> one prediction per frame, boxes in that frame's pixels."""
        batch = self._layout(np.asarray(outputs[0]))
        if len(transforms) != batch.shape[0]:
            raise GlimmerError(
                f"detection output has batch {batch.shape[0]} for {len(transforms)} frames"
            )
        results = []
        for pred, transform in zip(batch, transforms):
            boxes, scores, classes = self.decode(pred)
            boxes = transform.to_frame(boxes)
            results.append(
                {
                    "task": "detect",
                    "count": int(len(scores)),
                    "detections": [
                        {
                            "class": self.class_names[int(c)],
                            "index": int(c),
                            "score": round(float(p), 4),
                            "box": [round(float(v), 2) for v in b],
                        }
                        for b, p, c in zip(boxes, scores, classes)
                    ],
                }
            )
        return results

    @staticmethod
    def summary(pred: Dict[str, Any]) -> str:
        counts: Dict[str, int] = {}
        for det in pred["detections"]:
            counts[det["class"]] = counts.get(det["class"], 0) + 1
        parts = ", ".join(
            f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])
        )
        return "{} detections{}".format(pred["count"], ": " + parts if parts else "")
