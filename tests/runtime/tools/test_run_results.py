"""What glimmer-run writes, as other programs read it: ultralytics' keys, a schema version, the
shipped JSON Schemas (every line and the report validated against them), CSV, and ultralytics'
predict flags with their meanings."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_onnx import colour_classifier, fixed_detector

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.records import SCHEMA_VERSION, load_schema
from glimmer.runtime.tools.run import main

CLASSES = ["Fire", "Normal"]
WEIGHT = np.array([[20.0, 0.0], [0.0, 20.0], [0.0, 0.0]])  # red -> Fire, green -> Normal
COLOURS = [(0, 0, 255), (0, 255, 0), (0, 0, 250), (0, 0, 240), (0, 0, 245), (0, 0, 235)]


@pytest.fixture
def classifier_run(tmp_path):
    meta = ModelMeta(task="classify", name="rg", class_names=CLASSES, input_size=(16, 16))
    model = colour_classifier(tmp_path / "rg.onnx", WEIGHT, np.zeros(2), meta)
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for colour in COLOURS:
        writer.write(np.full((24, 32, 3), colour, np.uint8))
    writer.release()
    config = tmp_path / "deploy.toml"
    config.write_text("[classify]\nsmoothing = 0.0\nalert_frames = 2\nalert_threshold = 0.5\n")
    return model, clip, config


@pytest.fixture
def detector_run(tmp_path):
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [32, 32, 16, 8, 0.9, 0.0]  # car
    head[0, :, 1] = [33, 32, 16, 8, 0.0, 0.6]  # person, same place: kept (class-aware)
    head[0, :, 2] = [10, 10, 4, 4, 0.1, 0.1]  # below conf 0.25, above 0.05
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), np.full((100, 200, 3), 90, np.uint8))
    return model, folder


def _lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _validator(name: str):
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_classifier_lines_and_report_follow_the_shipped_schemas(classifier_run, tmp_path):
    model, clip, config = classifier_run
    out, report = tmp_path / "r.jsonl", tmp_path / "report.json"
    argv = ["--model", str(model), "--source", str(clip), "--config", str(config)]
    assert main(argv + ["--output", str(out), "--report", str(report)]) == 0
    lines = _lines(out)
    frames = _validator("frame")
    for line in lines:
        frames.validate(line)
    assert [line["schema_version"] for line in lines] == [SCHEMA_VERSION] * len(COLOURS)
    first = lines[0]["predictions"]
    # ultralytics' Results.summary() keys: name, numeric class, confidence
    assert (first["name"], first["class"]) == ("Fire", 0) and 0.5 < first["confidence"] <= 1
    assert first["top"][0] == {k: first[k] for k in ("name", "class", "confidence")}
    alerts = [line["predictions"]["alert"] for line in lines]
    assert alerts[:3] == [None, None, None]  # Fire, Normal, Fire: K = 2 not reached yet
    assert (alerts[3]["name"], alerts[3]["class"], alerts[3]["frames"]) == ("Fire", 0, 2)
    written = json.loads(report.read_text())
    _validator("report").validate(written)
    assert written["schema_version"] == SCHEMA_VERSION and written["frames"] == len(lines)


def test_a_line_with_an_old_key_fails_the_schema(classifier_run, tmp_path):
    """The schema is strict where it matters: a line in the old vocabulary does not pass."""
    jsonschema = pytest.importorskip("jsonschema")
    model, clip, config = classifier_run
    out = tmp_path / "r.jsonl"
    argv = ["--model", str(model), "--source", str(clip), "--config", str(config)]
    assert main(argv + ["--output", str(out)]) == 0
    line = _lines(out)[0]
    old = dict(line, predictions=dict(line["predictions"], label="Fire"))
    del old["predictions"]["name"]
    with pytest.raises(jsonschema.ValidationError):
        _validator("frame").validate(old)
    with pytest.raises(jsonschema.ValidationError):
        _validator("frame").validate({k: v for k, v in line.items() if k != "schema_version"})


def test_detector_lines_follow_the_schema_and_the_predict_flags_apply(detector_run, tmp_path):
    model, folder = detector_run
    out = tmp_path / "d.jsonl"
    base = ["--model", str(model), "--source", str(folder), "--output", str(out)]
    assert main(base) == 0
    validator = _validator("frame")
    lines = _lines(out)
    for line in lines:
        validator.validate(line)
    dets = lines[0]["predictions"]["detections"]
    assert [(d["name"], d["class"]) for d in dets] == [("car", 0), ("person", 1)]
    assert set(dets[0]["box"]) == {"x1", "y1", "x2", "y2"}
    assert lines[0]["file"].endswith("a.png")
    # ultralytics' --conf / --max-det / --iou, with their meanings
    assert main(base + ["--conf", "0.05"]) == 0
    assert [d["name"] for d in _lines(out)[0]["predictions"]["detections"]] == [
        "car",
        "person",
        "car",
    ]
    assert main(base + ["--max-det", "1"]) == 0
    assert [d["name"] for d in _lines(out)[0]["predictions"]["detections"]] == ["car"]
    assert main(base + ["--iou", "0.0001", "--conf", "0.05", "--max-det", "300"]) == 0
    assert len(_lines(out)[0]["predictions"]["detections"]) == 3  # class-aware: none overlap


def test_csv_output_one_row_per_detection_or_frame(classifier_run, detector_run, tmp_path):
    model, folder = detector_run
    table = tmp_path / "d.csv"  # the suffix picks CSV
    assert main(["--model", str(model), "--source", str(folder), "--output", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert [(r["index"], r["name"], r["class"]) for r in rows] == [
        ("0", "car", "0"),
        ("0", "person", "1"),
        ("1", "car", "0"),
        ("1", "person", "1"),
    ]
    assert rows[0]["file"].endswith("a.png") and float(rows[0]["x2"]) > float(rows[0]["x1"])
    model, clip, config = classifier_run
    forced = tmp_path / "c.txt"
    argv = ["--model", str(model), "--source", str(clip), "--config", str(config)]
    assert main(argv + ["--output", str(forced), "--format", "csv"]) == 0
    rows = list(csv.DictReader(forced.open()))
    assert [r["name"] for r in rows] == ["Fire", "Normal", "Fire", "Fire", "Fire", "Fire"]
    assert [r["alert_name"] for r in rows] == ["", "", "", "Fire", "Fire", "Fire"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "xml"], "key 'outputs.format' must be one of jsonl, csv, got 'xml'"),
        (["--conf", "0.5"], "--conf: detector settings, and rg is a classifier"),
        (["--conf", "1.5"], "key 'detect.conf' must be at most 1, got 1.5"),
        (["--imgsz", "640"], "--imgsz 640: rg takes 16x16 frames"),
        (["--imgsz", "1", "2", "3"], "--imgsz 1 2 3: give N or H W"),
        (["--half"], "--half: ONNX Runtime on the CPU has no FP16 path"),
        (["--save", "ftp://host/x.mp4"], "unknown output scheme 'ftp'"),
    ],
)
def test_bad_flags_are_one_line(classifier_run, tmp_path, capsys, extra, message):
    model, clip, _ = classifier_run
    out = tmp_path / "r.jsonl"
    argv = ["--model", str(model), "--source", str(clip), "--output", str(out)] + extra
    assert run_cli("glimmer-run", main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_imgsz_matching_the_model_is_accepted(classifier_run, tmp_path):
    model, clip, _ = classifier_run
    argv = ["--model", str(model), "--source", str(clip), "--max-frames", "1"]
    assert main(argv + ["--imgsz", "16"]) == 0
    assert main(argv + ["--imgsz", "16", "16", "--device", "cpu"]) == 0


@pytest.mark.parametrize(
    "toml, extra, message",
    [
        (
            '[outputs.mavlink]\nconect = "udpout:127.0.0.1:14550"\n',
            [],
            "[outputs.mavlink] unknown key 'conect' (did you mean 'connect'?)",
        ),
        ('[outputs.mqtt]\nport = "1883"\n', [], "[outputs.mqtt] key 'port' must be an integer"),
        ("", ["--save", "rtp://127.0.0.1:5000"], "--save rtp://127.0.0.1:5000: this OpenCV"),
    ],
)
def test_sink_mistakes_fail_before_the_model_loads(
    classifier_run, tmp_path, monkeypatch, capsys, toml, extra, message
):
    """A wrong sink table or an output this OpenCV cannot write costs no model load or engine
    build: it is refused first."""
    from glimmer.runtime.stream import video_out
    from glimmer.runtime.tools import run as run_module

    model, clip, _ = classifier_run
    monkeypatch.setattr(video_out, "gstreamer_available", lambda: False)
    monkeypatch.setattr(
        run_module, "open_backend", lambda *a, **k: pytest.fail("the model was loaded")
    )
    config = tmp_path / "sinks.toml"
    config.write_text(toml)
    argv = ["--model", str(model), "--source", str(clip), "--config", str(config)] + extra
    assert run_cli("glimmer-run", main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
