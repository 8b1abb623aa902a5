"""Stills are stills: a folder of images gives each result its file name and judges each image
alone (no smoothing, no K-frame alerts); a video of the same frames keeps both."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_onnx import colour_classifier

from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.sources import ImageListSource, VideoFileSource, open_source
from glimmer.runtime.tools.run import main

CLASSES = ["Fire", "Normal"]
# red -> Fire, green -> Normal (BGR frames; the model sees RGB in [0, 1])
WEIGHT = np.array([[20.0, 0.0], [0.0, 20.0], [0.0, 0.0]])
COLOURS = [(0, 0, 255), (0, 0, 230), (0, 255, 0), (0, 0, 250)]  # Fire, Fire, Normal, Fire


@pytest.fixture
def stills(tmp_path):
    meta = ModelMeta(task="classify", name="rg", class_names=CLASSES, input_size=(16, 16))
    model = colour_classifier(tmp_path / "rg.onnx", WEIGHT, np.zeros(2), meta)
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["a.png", "b.png", "c.png", "d.png"]
    for name, colour in zip(names, COLOURS):
        cv2.imwrite(str(folder / name), np.full((24, 32, 3), colour, np.uint8))
    (folder / "b2.png").write_bytes(b"not an image")  # skipped: it gets no index, no line
    clip = tmp_path / "same.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for colour in COLOURS:
        writer.write(np.full((24, 32, 3), colour, np.uint8))
    writer.release()
    config = tmp_path / "deploy.toml"
    config.write_text("[classify]\nsmoothing = 0.9\nalert_frames = 1\nalert_threshold = 0.5\n")
    return model, folder, names, clip, config


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_names_each_result_and_judges_each_image_alone(stills, tmp_path):
    model, folder, names, clip, config = stills
    out = tmp_path / "stills.jsonl"
    argv = ["--config", config, "--model", model, "--source", folder, "--output", out]
    assert main([str(a) for a in argv]) == 0
    lines = read_jsonl(out)
    assert [r["index"] for r in lines] == [0, 1, 2, 3]
    assert [r["file"] for r in lines] == [str(folder / n) for n in names]
    for r in lines:
        pred = r["predictions"]
        assert pred["alert"] is None  # alerts off, even with K = 1
        assert (
            pred["confidence"] == pred["raw"]["confidence"]
        )  # no smoothing: the image's own score
    assert [r["predictions"]["name"] for r in lines] == ["Fire", "Fire", "Normal", "Fire"]


def test_a_video_of_the_same_frames_keeps_smoothing_and_alerts(stills, tmp_path):
    model, folder, names, clip, config = stills
    out = tmp_path / "video.jsonl"
    argv = ["--config", config, "--model", model, "--source", clip, "--output", out]
    assert main([str(a) for a in argv]) == 0
    lines = read_jsonl(out)
    assert all("file" not in r for r in lines)
    assert lines[0]["predictions"]["alert"]["name"] == "Fire"  # K = 1: the first frame alerts
    # smoothing 0.9 keeps Fire through the one green frame
    assert lines[2]["predictions"]["name"] == "Fire"
    assert lines[2]["predictions"]["raw"]["name"] == "Normal"


def test_source_contract_still_and_name_of(stills):
    model, folder, names, clip, config = stills
    with open_source(str(folder)) as src:
        assert isinstance(src, ImageListSource) and src.still
        indices = [index for _, _, index in src]
        assert indices == [0, 1, 2, 3]
        assert [src.name_of(i) for i in indices] == [str(folder / n) for n in names]
        assert src.name_of(4) is None and src.name_of(-1) is None
    with open_source(str(clip)) as video:
        assert isinstance(video, VideoFileSource) and not video.still
        next(video)
        assert video.name_of(0) is None
