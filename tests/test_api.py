"""The public Python API: the README's example as written, load() on a classifier and a detector,
run() over a folder, bench()'s report, and ``import glimmer`` without torch."""

import contextlib
import importlib
import io
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_onnx import colour_classifier, fixed_detector

import glimmer
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]


def readme_example() -> str:
    """The fenced Python block under the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def mean_colour_classifier(path: Path, size: int = 32, batch="batch") -> Path:
    """Logits from the mean colour (the input is RGB): 10 R -> Flood, 10 G -> Fire, 10 B ->
    Earthquake, 5 -> Normal, so a solid colour is its class with the same score each time."""
    weight = np.zeros((3, 4), np.float32)
    weight[0, 2], weight[1, 1], weight[2, 0] = (
        10.0,
        10.0,
        10.0,
    )  # R -> Flood, G -> Fire, B -> Earthquake
    bias = np.array([0.0, 0.0, 0.0, 5.0], np.float32)
    return colour_classifier(
        path,
        weight,
        bias,
        ModelMeta(task="classify", name="colours", class_names=CLASSES, input_size=(size, size)),
        batch=batch,
    )


def solid(bgr, shape=(48, 64)) -> np.ndarray:
    return np.full(shape + (3,), bgr, np.uint8)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return mean_colour_classifier(tmp_path_factory.mktemp("api") / "colours.onnx")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Six frames in name order: red, green, blue, twice."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(6):
        cv2.imwrite(
            str(folder / f"{i:02d}.png"), solid([(0, 0, 255), (0, 255, 0), (255, 0, 0)][i % 3])
        )
    return folder


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    import torch

    from glimmer.models.checkpoint import save_checkpoint
    from glimmer.models.glimmernet import GlimmerNet
    from glimmer.train.synthetic import CLASSES as TRAINED
    from glimmer.train.synthetic import make_scene_dataset

    torch.manual_seed(0)
    (tmp_path / "demo" / "run").mkdir(parents=True)
    save_checkpoint(
        tmp_path / "demo" / "run" / "best.pt",
        GlimmerNet(widths=(8, 16, 32, 48), depths=(2, 1, 1, 1)),
        "glimmernet",
        TRAINED,
        (64, 64),
    )
    make_scene_dataset(tmp_path / "demo" / "data", {"Val": 6}, size=64)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert sorted(p.name for p in (tmp_path / "demo" / "api").iterdir()) == [
        "best.onnx",
        "export-report.json",
    ]
    assert lines[0].split()[0] in TRAINED and len(lines) == 1 + 5 + 1
    assert [int(line.split()[0]) for line in lines[1:6]] == [0, 1, 2, 3, 4]
    assert float(lines[-1]) > 0


def test_load_a_classifier_and_classify_one_frame(classifier, frames):
    with glimmer.load(classifier, classify={"top_k": 4}) as model:
        assert (model.task, model.class_names) == ("classify", CLASSES)
        red = model(solid((0, 0, 255)))
        assert red["name"] == "Flood" and [t["name"] for t in red["top"]][:2] == [
            "Flood",
            "Normal",
        ]
        assert sum(t["confidence"] for t in red["top"]) == pytest.approx(1.0, abs=1e-3)
        green = model(frames / "01.png")  # an image file's path is read as a BGR frame
        assert (
            green["name"] == "Fire" and green["confidence"] == red["confidence"]
        )  # no smoothing across calls
        for bad, message in (
            (np.zeros((8, 8), np.uint8), "HxWx3"),
            (solid(0).astype(np.float32), "uint8"),
            ([1, 2], "numpy image"),
            (frames / "absent.png", "not a readable image"),
        ):
            with pytest.raises(GlimmerError, match=message):
                model(bad)
        backend = model.backend
    assert not backend._active


def test_load_a_detector_gives_boxes_in_frame_pixels(tmp_path):
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :4, 0] = [32, 32, 16, 16]  # centre x, y, w, h in network pixels
    head[0, 5, 0] = 0.9  # class 1 (car)
    head[0, :4, 1] = [10, 10, 4, 4]
    head[0, 4, 1] = 0.1  # below the default 0.25
    with glimmer.load(fixed_detector(tmp_path / "det.onnx", head), detect={"conf": 0.05}) as model:
        wide = model(np.zeros((64, 128, 3), np.uint8))  # letterboxed: gain 0.5, 16 px padding top
    assert wide["count"] == 2
    car = wide["detections"][0]
    assert (car["name"], car["class"], car["confidence"]) == ("car", 1, 0.9)
    assert car["box"] == pytest.approx({"x1": 48.0, "y1": 16.0, "x2": 80.0, "y2": 48.0})
    with glimmer.load(tmp_path / "det.onnx") as model:
        assert model(np.zeros((64, 128, 3), np.uint8))["count"] == 1
    with pytest.raises(GlimmerError, match="unknown DetectSettings field 'threshold'"):
        glimmer.load(tmp_path / "det.onnx", detect={"threshold": 0.5})
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(GlimmerError, match="export it first"):
        glimmer.load(tmp_path / "model.pt")


def test_run_over_a_folder_yields_every_frame_in_order(classifier, frames):
    stream = glimmer.run(frames, classifier, classify={"smoothing": 0.0}, keep_frames=True)
    results = list(stream)
    assert [r.index for r in results] == list(range(6))
    assert [r.prediction["name"] for r in results] == ["Flood", "Fire", "Earthquake"] * 2
    assert results[0].frame.shape == (48, 64, 3) and set(results[0].latency_ms) >= {
        "inference",
        "end_to_end",
    }
    assert stream.report["frames"] == 6 and stream.report["task"] == "classify"
    assert stream.report["model"] == str(classifier)


def test_run_stops_early_and_leaves_a_loaded_model_open(classifier, frames):
    with glimmer.load(classifier) as model:
        with glimmer.run(frames, model, loop=0) as stream:  # forever, until closed
            first = [next(stream).index for _ in range(8)]
        assert first == list(range(8)) and stream.report is None
        assert [r.index for r in glimmer.run(frames, model, max_frames=2)] == [0, 1]
        assert model(solid((255, 0, 0)))["name"] == "Earthquake"
    with pytest.raises(GlimmerError, match="flip"):
        glimmer.run(frames, classifier, flip="sideways")
    with pytest.raises(GlimmerError, match="no such file or folder"):
        list(glimmer.run(frames / "absent", classifier))


def test_bench_returns_glimmer_benchs_report(classifier, frames):
    report = glimmer.bench(classifier, source=frames, warmup=1, iters=5, threads=1)
    assert report["tool"] == "glimmer-bench" and report["settings"]["iters"] == 5
    assert report["model_only"]["latency_ms"]["count"] == 5 and report["end_to_end"]["frames"] == 5
    assert report["settings"]["source"] == str(frames)
    assert "end_to_end" not in glimmer.bench(classifier, iters=2, warmup=0, end_to_end=False)
    with pytest.raises(GlimmerError, match="unknown bench option 'json'"):
        glimmer.bench(classifier, json="out.json")
    with pytest.raises(GlimmerError, match="--iters must be at least 1"):
        glimmer.bench(classifier, iters=0)


def test_export_settings_are_checked_before_anything_is_read(tmp_path):
    with pytest.raises(GlimmerError, match="unknown export setting 'fp8'"):
        glimmer.export(tmp_path / "missing.pt", fp8=True)
    with pytest.raises(GlimmerError, match="--dilation-mode must be one of"):
        glimmer.export(tmp_path / "missing.pt", dilation_mode="fast")
    with pytest.raises(GlimmerError, match="no such file"):
        glimmer.export(tmp_path / "missing.pt")
    importlib.import_module(
        "glimmer.export.cli"
    )  # importing the subpackage leaves glimmer.export callable
    assert callable(glimmer.export) and glimmer.export.api.ExportSettings is glimmer.ExportSettings


def test_import_glimmer_and_load_without_torch(classifier, frames):
    code = (
        "import sys\n"
        "for blocked in ('torch', 'torchvision', 'onnx', 'ultralytics'):\n"
        "    sys.modules[blocked] = None\n"
        "import glimmer\n"
        "assert not any(m.startswith('glimmer.runtime') for m in sys.modules)\n"
        f"with glimmer.load({str(classifier)!r}) as model:\n"
        f"    print(model({str(frames / '00.png')!r})['name'])\n"
        f"print(len(list(glimmer.run({str(frames)!r}, {str(classifier)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Flood", "6"]
