"""Detection NMS: OpenCV's (cv2.dnn.NMSBoxesBatched / NMSBoxes) keeps exactly the boxes the numpy
loop keeps, on many random sets, on every path the runtime can take (OpenCV 4.7+, an OpenCV with
only NMSBoxes such as JetPack 5's 4.5.4, none), and with max_det and the candidate cap."""

from typing import Iterator, Tuple

import cv2
import numpy as np
import pytest

from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.detect import (
    Detector,
    DetectSettings,
    batched_nms,
    batched_nms_numpy,
    nms,
    nms_implementation,
    nms_numpy,
)

IOUS = (0.3, 0.45, 0.7)
# OpenCV compares its IoU in float32 (double maths, cast to float), numpy in float32 or float64:
# a pair whose IoU is this close to the threshold may go either way, and only such a set may
# differ. None did on these seeds (about 1 set in 25 has such a pair, and then the pair rarely
# decides anything); a new seed that differs there is rounding, not a bug.
NEAR = 1e-5


def random_sets(seed: int, count: int) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(xyxy float32 boxes, float32 scores in (0, 1], class ids) in clusters, so that plenty
    suppress each other; some sets have tied scores (2 decimals) and exact duplicate boxes, and
    boxes reach past the top-left corner (negative coordinates) as a detector's do."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.choice([1, 2, 7, 40, 150, 400]))
        centres = rng.uniform(-20, 660, size=(int(rng.integers(1, 12)), 2))
        pick = centres[rng.integers(0, len(centres), n)]
        xy = pick + rng.normal(0, rng.uniform(2, 40), size=(n, 2))
        wh = rng.uniform(4, 120, size=(n, 2))
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1).astype(np.float32)
        scores = rng.uniform(0.001, 1.0, n).astype(np.float32)
        if i % 4 == 1:
            scores = np.maximum(np.round(scores, 2), 0.01).astype(np.float32)  # ties
        if i % 5 == 2 and n > 3:
            boxes[n // 2] = boxes[0]  # an exact duplicate (IoU 1)
        classes = rng.integers(0, int(rng.integers(1, 5)), n)
        yield boxes, scores, classes


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    b = boxes.astype(np.float64)
    w = np.clip(
        np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None
    )
    h = np.clip(
        np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = w * h
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def near_tie(boxes: np.ndarray, classes: np.ndarray, iou: float, agnostic: bool) -> bool:
    """Whether two boxes (of one class unless agnostic) have an IoU within NEAR of ``iou``."""
    close = np.abs(_iou_matrix(boxes) - iou) < NEAR
    if not agnostic:
        close &= classes[:, None] == classes[None, :]
    np.fill_diagonal(close, False)
    return bool(close.any())


def compare_with_numpy(seed: int, count: int) -> Tuple[int, int]:
    """(cases equal, cases that differ) for class-aware and agnostic NMS at each IoU, with no
    limit and with max_det 10; a case may differ only where a pair sits at the threshold."""
    same = differ = 0
    for boxes, scores, classes in random_sets(seed, count):
        for iou in IOUS:
            for agnostic in (False, True):
                for max_det in (0, 10):
                    if agnostic:
                        got = nms(boxes, scores, iou, max_det)
                        want = nms_numpy(boxes, scores, iou, max_det)
                    else:
                        got = batched_nms(boxes, scores, classes, iou, max_det)
                        want = batched_nms_numpy(boxes, scores, classes, iou, max_det)
                    assert got.dtype == np.int64
                    if got.tolist() == want.tolist():
                        same += 1
                        continue
                    assert near_tie(boxes, classes, iou, agnostic), (len(boxes), iou, agnostic)
                    differ += 1
    return same, differ


def test_opencv_nms_keeps_what_numpy_keeps_on_random_sets():
    batched = hasattr(cv2.dnn, "NMSBoxesBatched")  # OpenCV >= 4.7 (both venvs; not 4.5.4)
    assert nms_implementation() == "cv2.dnn." + ("NMSBoxesBatched" if batched else "NMSBoxes")
    assert nms_implementation(agnostic=True) == "cv2.dnn.NMSBoxes"
    same, differ = compare_with_numpy(seed=0, count=120)
    assert same + differ == 120 * len(IOUS) * 4 and differ == 0, differ


def test_opencv_without_batched_nms_offsets_classes_itself(monkeypatch):
    """OpenCV 4.5.4 (JetPack 5) has NMSBoxes but not NMSBoxesBatched (added in 4.7.0)."""
    monkeypatch.delattr(cv2.dnn, "NMSBoxesBatched", raising=False)
    assert nms_implementation() == "cv2.dnn.NMSBoxes"
    assert compare_with_numpy(seed=1, count=40) == (40 * len(IOUS) * 4, 0)


def test_numpy_fallback_where_opencv_has_no_nms(monkeypatch):
    monkeypatch.delattr(cv2.dnn, "NMSBoxesBatched", raising=False)
    monkeypatch.delattr(cv2.dnn, "NMSBoxes")
    assert nms_implementation() == nms_implementation(agnostic=True) == "numpy"
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.45).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.45, max_det=1).tolist() == [0]
    assert compare_with_numpy(seed=2, count=10) == (10 * len(IOUS) * 4, 0)


def test_classes_stay_apart_with_negative_coordinates():
    """NMSBoxesBatched's class offset assumes coordinates >= 0: unshifted, this class-1 box left
    of and above the input lands on the class-0 box in the far corner and is suppressed."""
    boxes = np.array([[600, 600, 640, 640], [-41, -41, -1, -1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    classes = np.array([0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    if not hasattr(cv2.dnn, "NMSBoxesBatched"):
        return
    rects = boxes.astype(np.float64)
    rects[:, 2:] -= rects[:, :2]
    raw = np.asarray(cv2.dnn.NMSBoxesBatched(rects, scores, classes.astype(np.int32), 0.0, 0.5))
    assert raw.reshape(-1).tolist() == [0]  # the pitfall the shift avoids


def test_non_positive_scores_stay_in_numpy(monkeypatch):
    """OpenCV needs a score threshold >= 0 and keeps scores above it: a zero score would vanish."""
    calls = []
    real = cv2.dnn.NMSBoxes
    monkeypatch.setattr(cv2.dnn, "NMSBoxes", lambda *a: calls.append(1) or real(*a))
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.0], np.float32), 0.5).tolist() == [0, 1]
    assert calls == []
    assert nms(boxes, np.array([0.5, 0.1], np.float32), 0.5).tolist() == [0, 1]
    assert calls == [1]


def _meta() -> ModelMeta:
    return ModelMeta(
        task="detect", name="d", class_names=["a", "b"], input_size=(64, 64), letterbox=True
    )


def _head(count: int) -> np.ndarray:
    """``count`` disjoint class-0 boxes along the diagonal, scores falling from 0.9."""
    head = np.zeros((1, 6, 40), np.float32)
    for i in range(count):
        head[0, :, i] = [4 + 6 * i, 4 + 6 * i, 4, 4, 0.9 - 0.01 * i, 0.0]
    return head


@pytest.mark.parametrize("agnostic", [False, True])
def test_detector_respects_max_det_and_the_candidate_cap(agnostic):
    _, transforms = Preprocessor(_meta())([np.zeros((64, 64, 3), np.uint8)])
    for settings, count in [
        (DetectSettings(max_det=300, agnostic=agnostic), 9),
        (DetectSettings(max_det=4, agnostic=agnostic), 4),
        (DetectSettings(max_det=300, max_candidates=6, agnostic=agnostic), 6),
    ]:
        pred = Detector(_meta(), settings)([_head(9)], transforms)[0]
        assert pred["count"] == count
        # the highest scores survive, in score order
        assert [d["confidence"] for d in pred["detections"]] == [
            round(0.9 - 0.01 * i, 4) for i in range(count)
        ]


def test_detector_drops_zero_scores_at_conf_zero():
    _, transforms = Preprocessor(_meta())([np.zeros((64, 64, 3), np.uint8)])
    pred = Detector(_meta(), DetectSettings(conf=0.0))([_head(3)], transforms)[0]
    assert pred["count"] == 3  # the 37 all-zero anchors are not detections
