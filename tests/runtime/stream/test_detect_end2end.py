"""End-to-end detection heads (``[B, N, 6]``: x1, y1, x2, y2, score, class, NMS done): told apart
from raw ``[B, 4 + nc, N]`` heads by the output shape and the metadata (ultralytics' ``end2end`` and
``args['nms']``, glimmer's ``extra.end2end``), decoded without a second NMS, and refused in one line
when the two could be confused (2 classes) and the metadata does not say which it is. Tiny ONNX
models with ultralytics' metadata run through glimmer's ONNX Runtime path; a real ultralytics
``nms=True`` export of an untrained YOLOv8n (built from its yaml, nothing downloaded) is compared
with ultralytics' own predictions."""

from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest
from boxes import xyxy

from glimmer.runtime import api
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.detect import Detector, DetectSettings

COCO80 = [f"c{i}" for i in range(80)]


def _meta(names, end2end: Optional[bool] = None, size: int = 64) -> ModelMeta:
    return ModelMeta(
        task="detect",
        name="m",
        class_names=list(names),
        input_size=(size, size),
        letterbox=True,
        extra={} if end2end is None else {"end2end": end2end},
    )


def _end2end(rows, n: int = 300) -> np.ndarray:
    """``[1, n, 6]``: the given rows, then zero padding (what a fixed-size export emits)."""
    out = np.zeros((1, n, 6), np.float32)
    out[0, : len(rows)] = rows
    return out


def _transforms(meta: ModelMeta, frame: np.ndarray):
    return Preprocessor(meta)([frame])[1]


ROWS = [
    [10, 12, 30, 40, 0.9, 1],  # kept
    [11, 12, 31, 40, 0.8, 1],  # overlaps the first: the model's NMS kept it, so glimmer does too
    [40, 40, 60, 60, 0.2, 0],  # below conf 0.25
]


# -- the shape and the metadata --------------------------------------------------------------------
def test_end2end_head_with_80_classes_is_read_from_its_shape_alone():
    meta = _meta(COCO80)
    pred = Detector(meta)([_end2end(ROWS)], _transforms(meta, np.zeros((64, 64, 3), np.uint8)))[0]
    assert pred["count"] == 2  # no second NMS, the padding and the low score dropped
    assert [xyxy(d) for d in pred["detections"]] == [[10, 12, 30, 40], [11, 12, 31, 40]]
    assert [(d["name"], d["class"], d["confidence"]) for d in pred["detections"]] == [
        ("c1", 1, 0.9),
        ("c1", 1, 0.8),
    ]


def test_two_classes_the_metadata_decides_or_the_shape_is_refused():
    frame = np.zeros((64, 64, 3), np.uint8)
    head = _end2end(ROWS)  # [1, 300, 6] is also a transposed raw head with 4 + 2 channels
    with pytest.raises(GlimmerError) as err:
        Detector(_meta(["a", "b"]))([head], _transforms(_meta(["a", "b"]), frame))
    message = str(err.value)
    assert "\n" not in message and "model 'm'" in message and "[1, 300, 6]" in message
    assert "end-to-end" in message and "2 classes" in message

    meta = _meta(["a", "b"], end2end=True)
    pred = Detector(meta)([head], _transforms(meta, frame))[0]
    assert [d["name"] for d in pred["detections"]] == ["b", "b"]

    # said raw: the same numbers are 300 anchors of xywh + 2 class scores, so rows 0 and 1 become
    # two overlapping 'b' boxes scoring 1.0 (channel 5), and NMS keeps the first
    meta = _meta(["a", "b"], end2end=False)
    pred = Detector(meta)([head], _transforms(meta, frame))[0]
    assert [(d["name"], d["confidence"]) for d in pred["detections"]] == [("b", 1.0)]
    assert xyxy(pred["detections"][0]) == [0.0, 0.0, 25.0, 32.0]  # xywh (10, 12, 30, 40), clipped


def test_square_six_by_six_output_is_refused_without_metadata():
    frame = np.zeros((64, 64, 3), np.uint8)
    head = _end2end(ROWS, n=6)  # [1, 6, 6]: raw, transposed raw or end-to-end
    with pytest.raises(GlimmerError, match=r"model 'm': output \[1, 6, 6\] is either"):
        Detector(_meta(["a", "b"]))([head], _transforms(_meta(["a", "b"]), frame))
    meta = _meta(["a", "b"], end2end=True)
    assert Detector(meta)([head], _transforms(meta, frame))[0]["count"] == 2
    assert Detector(_meta(["a", "b"], end2end=False))._layout(head)[0] == "raw"


def test_metadata_and_shape_that_disagree_are_an_error():
    meta = _meta(COCO80, end2end=True)
    with pytest.raises(
        GlimmerError, match=r"metadata says end-to-end .* output is \[1, 84, 8400\]"
    ):
        Detector(meta)([np.zeros((1, 84, 8400), np.float32)], [None])
    meta = _meta(COCO80, end2end=False)
    with pytest.raises(GlimmerError, match="does not match 4 \\+ 80 classes"):
        Detector(meta)([_end2end(ROWS)], [None])


def test_class_outside_the_metadata_is_an_error():
    meta = _meta(["a", "b"], end2end=True)
    with pytest.raises(GlimmerError, match="gives class 7, outside the metadata's 2 classes"):
        Detector(meta)([_end2end([[0, 0, 5, 5, 0.9, 7]])], _transforms(meta, np.zeros((64, 64, 3))))


def test_end2end_threshold_max_det_and_letterbox_undo():
    meta = _meta(COCO80)
    frame = np.zeros((96, 128, 3), np.uint8)  # gain 0.5: 64 x 48, 8 rows of padding above
    rows = [[4 + 2 * i, 8 + i, 14 + 2 * i, 18 + i, 0.9 - 0.05 * i, i] for i in range(8)]
    pred = Detector(meta, DetectSettings(conf=0.5, max_det=5))(
        [_end2end(rows)], _transforms(meta, frame)
    )
    assert pred[0]["count"] == 5  # scores 0.9..0.55 pass conf 0.5, max_det keeps the top 5
    first = pred[0]["detections"][0]
    assert xyxy(first) == [8.0, 0.0, 28.0, 20.0]  # ((4, 8, 14, 18) - (0, 8)) / 0.5
    assert [d["class"] for d in pred[0]["detections"]] == [0, 1, 2, 3, 4]


# -- ultralytics' metadata -------------------------------------------------------------------------
ULTRALYTICS = {"names": "{0: 'a', 1: 'b'}", "imgsz": "[64, 64]", "stride": "32", "batch": "1"}


@pytest.mark.parametrize(
    "extra_props, end2end",
    [
        ({}, None),  # an older export: neither key
        ({"end2end": "False", "args": "{'batch': 1, 'nms': False}"}, False),
        ({"end2end": "False", "args": "{'batch': 1, 'nms': None}"}, False),
        ({"end2end": "False", "args": "{'batch': 1, 'nms': True, 'opset': None}"}, True),
        ({"end2end": "True", "args": "{'batch': 1}"}, True),  # an NMS-free head (YOLOv10/26)
        ({"end2end": "True"}, True),
        ({"args": "{'nms': True}"}, True),
    ],
)
def test_ultralytics_metadata_says_whether_the_head_is_end2end(extra_props, end2end):
    meta = ModelMeta.from_props(dict(ULTRALYTICS, **extra_props))
    assert meta.end2end is end2end
    assert ModelMeta.from_json(meta.to_json()).end2end is end2end  # survives an engine sidecar


# -- tiny ONNX models through glimmer's ONNX Runtime path -----------------------------------------
def fixed_output(path: Path, output: np.ndarray, props: Dict[str, str], size: int = 64) -> Path:
    """An ONNX whose ``output0`` is always ``output`` (tied to the input ``images``), carrying
    ``props`` as its metadata_props (ultralytics' keys, not glimmer's)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["fixed", "z"], ["output0"]),
        ],
        "fixed_output",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [
            numpy_helper.from_array(output.astype(np.float32), "fixed"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _raw_head() -> np.ndarray:
    """``[1, 6, 300]`` with nc = 2: one 'b' box at (10, 12, 30, 40), the rest empty."""
    head = np.zeros((1, 6, 300), np.float32)
    head[0, :, 0] = [20, 26, 20, 28, 0.1, 0.9]
    return head


def test_onnx_models_in_both_layouts_with_two_classes(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    frame = np.full((64, 64, 3), 90, np.uint8)
    e2e = fixed_output(
        tmp_path / "e2e.onnx",
        _end2end([[10, 12, 30, 40, 0.9, 1]]),
        dict(ULTRALYTICS, end2end="False", args="{'batch': 1, 'nms': True}"),
    )
    raw = fixed_output(
        tmp_path / "raw.onnx",
        _raw_head(),
        dict(ULTRALYTICS, end2end="False", args="{'batch': 1, 'nms': False}"),
    )
    for path in (e2e, raw):
        with api.load(path, backend="onnxruntime") as model:
            pred = model(frame)
        assert pred["count"] == 1, path.name
        det = pred["detections"][0]
        assert (det["name"], det["confidence"], xyxy(det)) == ("b", 0.9, [10.0, 12.0, 30.0, 40.0])
    # an older export without the keys: [1, 300, 6] with 2 classes is refused, not guessed
    old = fixed_output(tmp_path / "old.onnx", _end2end([[10, 12, 30, 40, 0.9, 1]]), ULTRALYTICS)
    with api.load(old, backend="onnxruntime") as model:
        with pytest.raises(GlimmerError, match=r"output \[1, 300, 6\] is either an end-to-end"):
            model(frame)


# -- a real ultralytics nms=True export ------------------------------------------------------------
@pytest.fixture(scope="module")
def yolov8n_nms(tmp_path_factory):
    """An untrained YOLOv8n (2 classes, 64 px) from its yaml, its Detect biases raised so boxes
    pass the threshold, exported by ultralytics with ``nms=True``. Skips where ultralytics would
    need the network (it never should: no weights, no fonts)."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("torch")
    import os
    import socket

    import torch

    from glimmer.models.yolo import offline

    root = tmp_path_factory.mktemp("yolo-nms")
    reached: List[str] = []
    real_connect = socket.socket.connect

    def no_network(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
            reached.append(str(address[0]))
            raise OSError(f"test: network access to {address[0]} refused")
        return real_connect(self, address)

    here = os.getcwd()
    socket.socket.connect = no_network
    os.chdir(str(root))  # ultralytics writes the .onnx into the working folder
    try:
        with offline():
            import yaml
            from ultralytics import YOLO
            from ultralytics.nn.tasks import yaml_model_load

            cfg = yaml_model_load("yolov8n.yaml")  # ultralytics' own config, shipped with it
            cfg.update(nc=2)
            cfg.pop("yaml_file", None)
            Path("yolov8n-2c.yaml").write_text(yaml.safe_dump(cfg))
            torch.manual_seed(0)
            model = YOLO("yolov8n-2c.yaml", task="detect")
            model.model.names = {0: "person", 1: "car"}
            head = model.model.model[-1]
            # bias_init puts class scores near 1e-4 (a prior for training): raise them to ~0.5
            for branch in head.cv3:
                torch.nn.init.normal_(branch[-1].bias, mean=0.0, std=1.0)
            # and boxes about one stride from their anchor each way (DFL bin 1), not the frame
            for branch in head.cv2:
                torch.nn.init.normal_(branch[-1].weight, std=0.01)
                bias = torch.randn(4, head.reg_max) * 0.5
                bias[:, 1] += 4.0
                branch[-1].bias.data.copy_(bias.reshape(-1))
            try:
                out = Path(
                    model.export(
                        format="onnx",
                        imgsz=64,
                        nms=True,
                        simplify=False,
                        conf=0.05,
                        iou=0.5,
                        max_det=20,
                        verbose=False,
                    )
                ).resolve()
            except OSError as exc:  # pragma: no cover - only where ultralytics reached out
                pytest.skip(f"ultralytics export tried the network: {exc}")
    finally:
        os.chdir(here)
        socket.socket.connect = real_connect
    if reached:  # pragma: no cover - it recovered, but it tried
        pytest.skip(f"ultralytics tried the network ({', '.join(reached)})")
    assert root in out.parents
    return out


@pytest.mark.slow
def test_ultralytics_nms_export_through_glimmer_matches_ultralytics(yolov8n_nms, tmp_path):
    from glimmer.runtime.core.onnx_meta import read_onnx_metadata

    props = read_onnx_metadata(yolov8n_nms)
    meta = ModelMeta.from_props(props, str(yolov8n_nms))
    assert meta.end2end is True and meta.class_names == ["person", "car"]

    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (7, 7), 0)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frame)

    from glimmer.models.yolo import offline, yolo

    with offline():
        theirs = (
            yolo(yolov8n_nms)
            .predict(str(image), imgsz=64, conf=0.05, max_det=20, verbose=False)[0]
            .boxes
        )
    with api.load(yolov8n_nms, backend="onnxruntime", detect={"conf": 0.05, "max_det": 20}) as m:
        ours = m(frame)
    assert ours["count"] == len(theirs) == 20  # max_det: plenty of boxes to compare
    boxes = np.array([xyxy(d) for d in ours["detections"]])
    np.testing.assert_allclose(boxes, theirs.xyxy.numpy(), atol=0.02)
    np.testing.assert_allclose(
        [d["confidence"] for d in ours["detections"]], theirs.conf.numpy(), atol=1e-4
    )
    assert [d["class"] for d in ours["detections"]] == theirs.cls.numpy().astype(int).tolist()
