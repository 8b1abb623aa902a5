"""Accuracy evaluation of glimmer-check: the COCO evaluator (faster-coco-eval) against hand-made
cases whose mAP follows from COCO's rules by hand, and the runtime path (preprocess, backend,
Detector / argmax) over YOLO-format and labelled folders, with small ONNX models built here."""
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import labelled_images, read_image
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
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


def _save(graph, meta: ModelMeta, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def centroid_classifier(path: Path, centroids: np.ndarray, size: int = 64) -> Path:
    """A nearest-centroid classifier on mean RGB as an ONNX graph: GlobalAveragePool -> Gemm.

    logits_k = 2 c_k . x - |c_k|^2 (= -|x - c_k|^2 up to a constant), scaled so softmax is sharp.
    """
    weight = (2.0 * centroids.T * 20.0).astype(np.float32)          # [3, nc]
    bias = (-(centroids ** 2).sum(1) * 20.0).astype(np.float32)     # [nc]
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
         helper.make_node("Gemm", ["features", "w", "b"], ["logits"])],
        "centroids", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(centroids)])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    meta = ModelMeta(task="classify", name="centroids", class_names=list(CLASSES), input_size=(size, size))
    return _save(graph, meta, path)


def fit_centroids(root: Path) -> np.ndarray:
    """Mean RGB in [0, 1] of each class of a labelled folder (what the runtime feeds the model)."""
    paths, labels, _ = labelled_images(root, CLASSES)
    feats = np.array([read_image(p)[..., ::-1].reshape(-1, 3).mean(0) / 255.0 for p in paths])
    labels = np.array(labels)
    return np.stack([feats[labels == k].mean(0) for k in range(len(CLASSES))])


def fixed_detector(path: Path, head: np.ndarray, class_names: Sequence[str], size: int = 64) -> Path:
    """A detector whose output is always ``head`` [1, 4 + nc, N] (tied to the input, no dead node)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Squeeze", ["z", "axes"], ["z1"]),
         helper.make_node("Add", ["head", "z1"], ["output0"])],
        "fixed_head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        [numpy_helper.from_array(head.astype(np.float32), "head"),
         numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
         numpy_helper.from_array(np.array([3], np.int64), "axes")])
    meta = ModelMeta(task="detect", name="fixed", class_names=list(class_names), input_size=(size, size),
                     letterbox=True, stride=32)
    return _save(graph, meta, path)


def yolo_set(root: Path, boxes_xyxy: List[List[float]], classes: List[int], size: int = 64) -> Path:
    """``root/images/a.png`` (size x size) and ``root/labels/a.txt`` with the given pixel boxes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.full((size, size, 3), 90, np.uint8))
    lines = []
    for cls, (x1, y1, x2, y2) in zip(classes, boxes_xyxy):
        lines.append(f"{cls} {(x1 + x2) / 2 / size} {(y1 + y2) / 2 / size} {(x2 - x1) / size} {(y2 - y1) / size}")
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    return root


# -- the COCO evaluator on hand-made cases ---------------------------------------------------------
GT = [[(0, [0.0, 0.0, 100.0, 100.0]), (0, [200.0, 200.0, 260.0, 260.0]), (1, [300.0, 0.0, 340.0, 50.0])]]


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
    head[0, :, 0] = [20, 20, 16, 16, 0.9, 0.0]    # car (12, 12, 28, 28)
    head[0, :, 1] = [44, 40, 16, 24, 0.0, 0.8]    # person (36, 28, 52, 52)
    head[0, :, 2] = [50, 10, 6, 6, 0.3, 0.0]      # a false car where nothing is labelled
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
    bad = centroid_classifier(root / "bad.onnx", centroids[[1, 0, 2, 3]])  # Fire and Earthquake swapped
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
    assert worse["per_class"]["Fire"]["recall"] < 0.3 and worse["per_class"]["Earthquake"]["recall"] < 0.3
    assert worse["f1_weighted"] < report["f1_weighted"] - 0.3


# -- one rule for unreadable images, one classifier scorer ------------------------------------------
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
        assert result["images"] == 1 and result["unreadable"] == 1 and result["map50"] == pytest.approx(1.0)
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
    assert by_backend["f1_weighted"] == full["f1_weighted"] and by_backend["accuracy"] == full["accuracy"]
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
