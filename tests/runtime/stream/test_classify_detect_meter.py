"""Task postprocessing and the meter: softmax/top-k, smoothing, alerts after exactly K frames, NMS
on hand-made boxes, boxes mapped back through a hand-made letterbox, latency statistics."""

import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.classify import Classifier, ClassifySettings, softmax
from glimmer.runtime.stream.detect import Detector, DetectSettings, batched_nms, nms
from glimmer.runtime.stream.meter import STAGES, Meter, format_report

CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]
FIRE = np.array([0.0, 8.0, 0.0, 0.0])
NORMAL = np.array([0.0, 0.0, 0.0, 8.0])


def classify_meta() -> ModelMeta:
    return ModelMeta(task="classify", name="t", class_names=CLASSES, input_size=(32, 32))


def test_softmax_top_k_order_and_values():
    clf = Classifier(classify_meta(), ClassifySettings(top_k=2, smoothing=0.0))
    logits = np.array([1.0, 3.0, 2.0, 0.0])
    pred = clf.frame(logits)
    expected = np.exp(logits) / np.exp(logits).sum()
    assert [(t["name"], t["class"]) for t in pred["top"]] == [("Fire", 1), ("Flood", 2)]
    assert pred["top"][0]["confidence"] == pytest.approx(expected[1], abs=1e-4)
    assert pred["top"][1]["confidence"] == pytest.approx(expected[2], abs=1e-4)
    assert (pred["name"], pred["class"]) == ("Fire", 1)  # ultralytics: name, numeric class
    assert softmax(np.array([1000.0, 1000.0])).tolist() == [0.5, 0.5]  # no overflow


def test_alert_fires_after_exactly_k_frames_and_resets():
    k = 4
    clf = Classifier(
        classify_meta(), ClassifySettings(smoothing=0.0, alert_threshold=0.9, alert_frames=k)
    )
    alerts = [clf.frame(FIRE)["alert"] for _ in range(k + 2)]
    assert alerts[: k - 1] == [None] * (k - 1)
    assert alerts[k - 1]["name"] == "Fire" and alerts[k - 1]["frames"] == k and alerts[k - 1]["new"]
    assert alerts[k]["frames"] == k + 1 and not alerts[k]["new"]
    # One normal frame breaks the run: K more frames are needed again.
    assert clf.frame(NORMAL)["alert"] is None
    assert [clf.frame(FIRE)["alert"] is None for _ in range(k)] == [True] * (k - 1) + [False]


def test_normal_class_never_alerts_and_is_configurable():
    clf = Classifier(classify_meta(), ClassifySettings(smoothing=0.0, alert_frames=1))
    assert all(clf.frame(NORMAL)["alert"] is None for _ in range(5))
    fire_normal = Classifier(
        classify_meta(), ClassifySettings(smoothing=0.0, alert_frames=1, normal_class="fire")
    )
    assert fire_normal.frame(FIRE)["alert"] is None
    assert fire_normal.frame(NORMAL)["alert"]["name"] == "Normal"
    with pytest.raises(GlimmerError, match="normal_class 'Calm' is not one of"):
        Classifier(classify_meta(), ClassifySettings(normal_class="Calm"))


def test_normal_class_defaults_to_a_normal_class_if_any_and_empty_means_none():
    # default: the model's class named Normal (any case) is exempt ...
    lower = ModelMeta(
        task="classify", name="t", class_names=["fire", "normal"], input_size=(32, 32)
    )
    clf = Classifier(lower, ClassifySettings(smoothing=0.0, alert_frames=1))
    assert clf.normal_index == 1 and clf.frame(np.array([0.0, 8.0]))["alert"] is None
    # ... a model without one runs, with no class exempt
    animals = ModelMeta(task="classify", name="a", class_names=["cat", "dog"], input_size=(8, 8))
    clf = Classifier(animals, ClassifySettings(smoothing=0.0, alert_frames=1))
    assert clf.normal_index is None
    assert clf.frame(np.array([8.0, 0.0]))["alert"]["name"] == "cat"
    assert clf.frame(np.array([0.0, 8.0]))["alert"]["name"] == "dog"
    # "" says no class is exempt, even where one is called Normal
    none = Classifier(
        classify_meta(), ClassifySettings(smoothing=0.0, alert_frames=1, normal_class="")
    )
    assert none.frame(NORMAL)["alert"]["name"] == "Normal"
    # a name the model lacks is an error naming the model's classes
    with pytest.raises(GlimmerError, match=r"normal_class 'Normal' is not one of .*\(cat, dog\)"):
        Classifier(animals, ClassifySettings(normal_class="Normal"))


def test_stills_settings_turn_smoothing_and_alerts_off():
    settings = ClassifySettings(smoothing=0.9, alert_frames=1, top_k=2).for_stills()
    assert (settings.smoothing, settings.alerts, settings.top_k) == (0.0, False, 2)
    clf = Classifier(classify_meta(), settings)
    preds = [clf.frame(FIRE), clf.frame(NORMAL)]
    assert [p["name"] for p in preds] == ["Fire", "Normal"]  # no memory of the previous image
    assert all(p["alert"] is None for p in preds)


def test_smoothing_is_an_exponential_moving_average_and_delays_the_alert():
    a = 0.5
    clf = Classifier(
        classify_meta(), ClassifySettings(smoothing=a, alert_threshold=0.9, alert_frames=2)
    )
    p_normal, p_fire = softmax(NORMAL), softmax(FIRE)
    smoothed = p_normal
    clf.frame(NORMAL)
    expected_first = None
    for i in range(1, 8):
        smoothed = a * smoothed + (1 - a) * p_fire
        pred = clf.frame(FIRE)
        assert pred["top"][0]["confidence"] == pytest.approx(float(smoothed.max()), abs=1e-4)
        if expected_first is None and smoothed[1] >= 0.9:
            expected_first = i + 1  # above the threshold from frame i, alert one frame later
        if pred["alert"] is not None:
            assert i == expected_first
            break
    else:
        pytest.fail("the alert never fired")


def test_nms_hand_made_case_class_aware_and_agnostic():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 0, 1])
    # IoU(box0, box1) = 81 / 119 = 0.68: suppressed at 0.45, kept at 0.7.
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, classes, 0.45).tolist() == [0, 2, 3]


def test_boxes_map_back_to_frame_coordinates_through_a_letterbox():
    meta = ModelMeta(
        task="detect",
        name="d",
        class_names=["car", "person"],
        input_size=(320, 320),
        letterbox=True,
        stride=32,
    )
    frame = np.full((200, 400, 3), 50, np.uint8)
    batch, transforms = Preprocessor(meta)([frame])
    # 400x200 -> gain 0.8 -> 320x160, padded 80 rows above and below.
    t = transforms[0]
    assert (t.gain_x, t.gain_y, t.pad_x, t.pad_y) == (0.8, 0.8, 0.0, 80.0)
    assert np.allclose(batch[0, :, :80], 114 / 255.0) and np.allclose(
        batch[0, :, 80:240], 50 / 255.0
    )
    # Anchors: centre-xywh in network pixels, then per-class scores.
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [120, 160, 160, 80, 0.9, 0.1]  # xyxy (40, 120, 200, 200) in the input
    head[0, :, 1] = [124, 162, 160, 80, 0.8, 0.0]  # overlaps anchor 0, same class: suppressed
    head[0, :, 2] = [300, 300, 10, 10, 0.1, 0.2]  # below the threshold
    preds = Detector(meta, DetectSettings(conf=0.25, iou=0.45))([head], transforms)
    assert preds[0]["count"] == 1
    det = preds[0]["detections"][0]
    assert (det["name"], det["class"]) == ("car", 0) and det["confidence"] == pytest.approx(0.9)
    assert det["box"] == {"x1": 50.0, "y1": 50.0, "x2": 250.0, "y2": 150.0}


def test_detector_accepts_transposed_head_and_rejects_wrong_class_count():
    # with 2 classes a transposed raw head [1, N, 6] looks end-to-end: the metadata says raw
    meta = ModelMeta(
        task="detect",
        name="d",
        class_names=["a", "b"],
        input_size=(64, 64),
        letterbox=True,
        extra={"end2end": False},
    )
    head = np.zeros((1, 6, 5), np.float32)
    head[0, :, 0] = [32, 32, 10, 10, 0.0, 0.9]
    _, transforms = Preprocessor(meta)([np.zeros((64, 64, 3), np.uint8)])
    det = Detector(meta)
    assert det([head.transpose(0, 2, 1)], transforms)[0]["detections"][0]["name"] == "b"
    with pytest.raises(GlimmerError, match="does not match 4 \\+ 2 classes"):
        det([np.zeros((1, 7, 5), np.float32)], transforms)


def test_meter_statistics_and_report_fields():
    meter = Meter(window=1000)
    meter.start(0.0)
    for i in range(1, 101):
        meter.add_frame({name: float(i) for name in STAGES}, now=i * 0.01)
    report = meter.report()
    assert report["frames"] == 100 and report["wall_s"] == pytest.approx(1.0)
    assert report["fps"] == pytest.approx(100.0)
    for name in ("capture", "preprocess", "inference", "postprocess", "end_to_end"):
        stats = report["stages"][name]
        assert stats["mean_ms"] == pytest.approx(50.5)
        assert stats["median_ms"] == pytest.approx(50.5)
        assert stats["p90_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 90))
        assert stats["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
        assert stats["includes"]
    assert "end_to_end" in format_report(report) and "throughput 100.0 FPS" in format_report(report)


def test_meter_ring_keeps_memory_fixed_and_means_exact():
    meter = Meter(window=10)
    for i in range(1000):
        meter.add_frame({"inference": float(i)}, now=float(i))
    stats = meter.report()["stages"]["inference"]
    assert stats["count"] == 1000 and stats["mean_ms"] == pytest.approx(499.5)
    assert stats["median_ms"] == pytest.approx(994.5)  # percentiles over the last 10 only
    assert meter.stages["inference"].recent().size == 10
