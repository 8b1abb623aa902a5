"""Accuracy evaluation of glimmer-check: the COCO evaluator (faster-coco-eval) against hand-made
cases whose mAP follows from COCO's rules by hand, and the runtime path (preprocess, backend,
Detector / argmax) over YOLO-format and labelled folders, with small ONNX models built here."""

import numpy as np
import pytest
from tiny_onnx import centroid_classifier, fit_centroids, fixed_detector, yolo_set

from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.tools.evaluate import (
    coco_map,
    evaluate_classifier,
    evaluate_detector,
    read_labels,
)
from glimmer.train.synthetic import CLASSES, make_scene_dataset

# 101-point interpolated AP of one class where the first of two objects is found at precision 1
# and the second never: precision 1 at recall 0.00..0.50 (51 points), 0 above.
HALF_RECALL_AP = 51 / 101


# -- the COCO evaluator on hand-made cases ---------------------------------------------------------
GT = [
    [
        (0, [0.0, 0.0, 100.0, 100.0]),
        (0, [200.0, 200.0, 260.0, 260.0]),
        (1, [300.0, 0.0, 340.0, 50.0]),
    ]
]


def test_perfect_predictions_give_map_one():
    dets = [[(c, 0.9, box) for c, box in GT[0]]]
    result = coco_map(GT, dets, ["a", "b"], [(480, 640)])
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    assert (result["objects"], result["detections"]) == (3, 3)


def test_box_shifted_to_iou_062_counts_at_50_but_not_above_60():
    """One object of class 'a' found exactly (score 0.9) and one with IoU 0.62 (score 0.8).

    IoU 0.50, 0.55, 0.60: both matched, AP = 1. IoU 0.65..0.95 (7 thresholds): the first is a true
    positive at precision 1, the second a false positive, so AP = 51/101. Class 'b' is perfect.
    """
    shifted = [200.0, 200.0, 260.0, 200.0 + 60.0 * 0.62]  # same x, 62% of the height: IoU 0.62
    dets = [[(0, 0.9, GT[0][0][1]), (0, 0.8, shifted), (1, 0.9, GT[0][2][1])]]
    result = coco_map(GT, dets, ["a", "b"], [(480, 640)])
    class_a = (3 * 1.0 + 7 * HALF_RECALL_AP) / 10
    assert result["map50"] == pytest.approx(1.0)
    assert result["map50_95"] == pytest.approx((class_a + 1.0) / 2, abs=1e-6)


def test_a_missed_object_halves_recall():
    gt = [[(0, [0.0, 0.0, 100.0, 100.0]), (0, [200.0, 200.0, 260.0, 260.0])]]
    result = coco_map(gt, [[(0, 0.9, [0.0, 0.0, 100.0, 100.0])]], ["a"], [(480, 640)])
    assert result["map50"] == pytest.approx(HALF_RECALL_AP, abs=1e-6)
    assert result["map50_95"] == pytest.approx(HALF_RECALL_AP, abs=1e-6)


def test_wrong_class_and_no_detections_score_zero():
    gt = [[(0, [0.0, 0.0, 100.0, 100.0])]]
    assert coco_map(gt, [[(1, 0.9, [0.0, 0.0, 100.0, 100.0])]], ["a", "b"])["map50"] == 0.0
    assert coco_map(gt, [[]], ["a", "b"])["map50_95"] == 0.0


# -- through the runtime ---------------------------------------------------------------------------
def test_detector_map_through_runtime_from_yolo_folder_and_data_yaml(tmp_path):
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [20, 20, 16, 16, 0.9, 0.0]  # car (12, 12, 28, 28)
    head[0, :, 1] = [44, 40, 16, 24, 0.0, 0.8]  # person (36, 28, 52, 52)
    head[0, :, 2] = [50, 10, 6, 6, 0.3, 0.0]  # a false car where nothing is labelled
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    data = yolo_set(tmp_path / "val", [[12, 12, 28, 28], [36, 28, 52, 52]], [0, 1])
    with OnnxRuntimeBackend(model) as backend:
        result = evaluate_detector(backend, data)
        assert (result["images"], result["objects"], result["detections"]) == (1, 2, 3)
        # the false car scores below the true one, so precision is 1 up to full recall
        assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
        (tmp_path / "data.yaml").write_text("path: val\nval: images\nnames: {0: car, 1: person}\n")
        assert evaluate_detector(backend, tmp_path / "data.yaml")["map50"] == pytest.approx(1.0)
        (tmp_path / "bad.yaml").write_text("path: val\nval: images\nnames: [car]\n")
        with pytest.raises(GlimmerError, match="names 1 classes, the model 2"):
            evaluate_detector(backend, tmp_path / "bad.yaml")


def test_bad_label_line_names_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(GlimmerError, match=r"a.txt:2: class 7 is outside the model's 2 classes"):
        read_labels(tmp_path / "a.txt", 64, 64, 2)
    (tmp_path / "b.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(GlimmerError, match=r"b.txt:1: expected 'class cx cy w h'"):
        read_labels(tmp_path / "b.txt", 64, 64, 2)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scene_dataset(root, {"Train": 12, "Test": 8}, size=64)
    centroids = fit_centroids(root / "Train")
    good = centroid_classifier(root / "good.onnx", centroids)
    bad = centroid_classifier(
        root / "bad.onnx", centroids[[1, 0, 2, 3]]
    )  # Fire and Earthquake swapped
    return root, good, bad


def test_classifier_weighted_f1_and_per_class_through_runtime(scenes):
    root, good, bad = scenes
    with OnnxRuntimeBackend(good) as backend:
        report = evaluate_classifier(backend, root / "Test")
    assert report["num_samples"] == 32
    assert {n: v["support"] for n, v in report["per_class"].items()} == dict.fromkeys(CLASSES, 8)
    assert report["f1_weighted"] >= 0.85
    with OnnxRuntimeBackend(bad) as backend:
        worse = evaluate_classifier(backend, root / "Test")
    assert (
        worse["per_class"]["Fire"]["recall"] < 0.3
        and worse["per_class"]["Earthquake"]["recall"] < 0.3
    )
    assert worse["f1_weighted"] < report["f1_weighted"] - 0.3


# -- one rule for unreadable images, one classifier scorer -----------------------------------------
def test_unreadable_images_are_skipped_and_counted_for_both_tasks(scenes, tmp_path):
    """The rule (runtime/tools/evaluate.py): skip the file, count it, name it in the report."""
    import shutil

    root, good, _ = scenes
    test = tmp_path / "Test"
    shutil.copytree(root / "Test", test)
    broken = test / CLASSES[0] / "zz-truncated.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with OnnxRuntimeBackend(good) as backend:
        report = evaluate_classifier(backend, test)
    assert report["num_samples"] == 32 and report["unreadable"] == 1
    assert report["unreadable_files"] == [str(broken)]

    head = np.zeros((1, 6, 1), np.float32)
    head[0, :, 0] = [20, 20, 16, 16, 0.9, 0.0]
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    data = yolo_set(tmp_path / "val", [[12, 12, 28, 28]], [0])
    (data / "images" / "b.png").write_bytes(b"")
    with OnnxRuntimeBackend(model) as backend:
        result = evaluate_detector(backend, data)
        assert (
            result["images"] == 1
            and result["unreadable"] == 1
            and result["map50"] == pytest.approx(1.0)
        )
        (data / "images" / "a.png").write_bytes(b"")
        with pytest.raises(GlimmerError, match="no readable images"):
            evaluate_detector(backend, data)


def test_a_set_read_once_scores_backends_sessions_and_callables_alike(scenes, tmp_path):
    from glimmer.runtime.backends.ort.session import make_session
    from glimmer.runtime.tools.evaluate import load_labelled, score

    root, good, bad = scenes
    with OnnxRuntimeBackend(good) as backend:
        meta, full = backend.meta, evaluate_classifier(backend, root / "Test")
        data = load_labelled(meta, root / "Test")
        by_backend = score(backend, data)
    assert data.inputs.shape == (32, 3, 64, 64) and data.unreadable == 0 and len(data.truth) == 32
    assert (
        by_backend["f1_weighted"] == full["f1_weighted"]
        and by_backend["accuracy"] == full["accuracy"]
    )
    session = make_session(good)  # its batch is fixed at 1: every input its own call
    assert score(session, data) == by_backend
    batches = []

    def logits(x):  # a callable gets batches of 8 and returns their logits
        batches.append(len(x))
        return np.concatenate([session.run(None, {"images": row[None]})[0] for row in x])

    assert score(logits, data) == by_backend and batches == [8, 8, 8, 8]
    assert score(make_session(bad), data)["f1_weighted"] < by_backend["f1_weighted"] - 0.3
    with pytest.raises(GlimmerError, match=r"^--val .*: class folders"):
        load_labelled(meta, root, "--val")
    empty = tmp_path / "empty"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
        (empty / name / "x.png").write_bytes(b"")
    with pytest.raises(GlimmerError, match=r"^--val .*empty: no readable images"):
        load_labelled(meta, empty, "--val")


# -- detections counted per image: max_det, not COCO's default 100 ---------------------------------
def test_crowded_image_counts_up_to_max_det_detections():
    """150 objects of one class, each found exactly: all count (AP 1). COCO's default 100 per image
    (and class) would stop recall at 100 / 150, precision 1 at recall 0.00..0.66: 67 of 101 points.
    """
    boxes = [
        [10.0 * (i % 30), 20.0 * (i // 30), 10.0 * (i % 30) + 8, 20.0 * (i // 30) + 8]
        for i in range(150)
    ]
    gt = [[(0, b) for b in boxes]]
    dets = [[(0, 0.9 - 0.001 * i, b) for i, b in enumerate(boxes)]]
    result = coco_map(gt, dets, ["person"], [(480, 640)])
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    assert "up to 300 detections per image" in result["map_definition"]
    capped = coco_map(gt, dets, ["person"], [(480, 640)], max_det=100)
    assert capped["map50"] == pytest.approx(67 / 101, abs=1e-6)
    assert coco_map(gt, dets, ["person"], [(480, 640)], max_det=5)["map50"] == pytest.approx(
        4 / 101, abs=1e-6
    )  # recall 5/150 = 0.033: points 0.00..0.03
