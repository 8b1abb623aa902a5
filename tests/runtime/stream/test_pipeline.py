"""glimmer-run end to end on generated clips and folders: a tiny exported GlimmerNet (random
weights) and a hand-built detection graph, both with our metadata, in ONNX Runtime."""

import json
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_onnx import add_meta, export_tiny_glimmernet, fixed_detector

from glimmer.runtime.backends.base import Backend, TensorSpec
from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream import sinks as sinks_mod
from glimmer.runtime.stream.classify import softmax
from glimmer.runtime.stream.meter import format_report
from glimmer.runtime.stream.pipeline import Pipeline, build_task
from glimmer.runtime.stream.sinks import FrameResult, JsonLinesSink, Sink
from glimmer.runtime.stream.sources import SourceOptions, open_source
from glimmer.runtime.tools.run import main
from glimmer.train.synthetic import CLASSES, make_scene_video

FRAMES = 24


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny GlimmerNet (depths 1,1,1,1, 64 px) exported with torch.onnx, and a 24-frame clip."""
    # exported by torch, absent from the runtime-only Python 3.8 suite: its tests skip there
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("run")
    onnx_path = root / "glimmernet.onnx"
    export_tiny_glimmernet(onnx_path)
    add_meta(
        onnx_path,
        ModelMeta(
            task="classify",
            name="glimmernet",
            class_names=list(CLASSES),
            input_size=(64, 64),
            extra={"dataset": "random weights"},
        ),
    )
    clip = make_scene_video(
        root / "clip.avi",
        ["Fire", "Normal", "Flood", "Earthquake"],
        frames_per_label=FRAMES // 4,
        size=(160, 96),
        fps=12.0,
        fourcc="MJPG",
    )
    return root, onnx_path, clip


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_frame_of_a_file_in_order_with_jsonl_video_and_report(work, capsys):
    root, model, clip = work
    out, video, report_path = root / "r.jsonl", root / "annotated.mp4", root / "report.json"
    assert (
        main(
            [
                "--model",
                str(model),
                "--source",
                str(clip),
                "--output",
                str(out),
                "--save",
                str(video),
                "--report",
                str(report_path),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "not trained on real aerial imagery" in printed and "throughput" in printed
    lines = read_jsonl(out)
    assert [r["index"] for r in lines] == list(range(FRAMES))
    assert [r["timestamp"] for r in lines] == pytest.approx(
        [i / 12.0 for i in range(FRAMES)], abs=1e-5
    )
    for r in lines:
        assert set(r["latency_ms"]) == {
            "capture",
            "preprocess",
            "inference",
            "postprocess",
            "end_to_end",
        }
        assert r["predictions"]["name"] in CLASSES and len(r["predictions"]["top"]) == 3
    # Predictions agree with the model run directly on the same frames.
    with open_source(str(clip)) as src, OnnxRuntimeBackend(model, threads=1) as be:
        pre = Preprocessor(be.meta)
        for (frame, _, i), r in zip(src, lines):
            assert r["index"] == i
            probs = softmax(be.infer(pre([frame])[0])[0][0])
            assert r["predictions"]["raw"]["name"] == CLASSES[int(probs.argmax())]
            assert r["predictions"]["raw"]["class"] == int(probs.argmax())
            assert r["predictions"]["raw"]["confidence"] == pytest.approx(
                float(probs.max()), abs=1e-4
            )
    report = json.loads(report_path.read_text())
    assert report["frames"] == FRAMES and report["frames_dropped"] == 0 and report["fps"] > 0
    for stage in ("capture", "preprocess", "inference", "postprocess", "end_to_end"):
        stats = report["stages"][stage]
        assert stats["count"] == FRAMES and stats["includes"]
        assert (
            stats["min_ms"]
            <= stats["median_ms"]
            <= stats["p90_ms"]
            <= stats["p99_ms"]
            <= stats["max_ms"]
        )
    assert (
        report["task"] == "classify"
        and "onnxruntime" in report["backend"]
        and not report["interrupted"]
    )
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (
        160,
        96,
    )
    cap.release()
    assert not [p.name for p in root.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")]


def test_flags_override_config_max_frames(work, tmp_path):
    root, model, clip = work
    config = tmp_path / "deploy.toml"
    config.write_text(
        f'[model]\npath = "{model}"\n[runtime]\nsource = "{clip}"\nmax_frames = 3\n'
        f'[outputs]\noutput = "from_config.jsonl"\n'
    )
    assert main(["--config", str(config), "--threads", "1"]) == 0
    assert [r["index"] for r in read_jsonl(tmp_path / "from_config.jsonl")] == [0, 1, 2]
    out = tmp_path / "flags.jsonl"
    assert (
        main(["--config", str(config), "--max-frames", "7", "--output", str(out), "--threads", "1"])
        == 0
    )
    assert [r["index"] for r in read_jsonl(out)] == list(range(7))


def test_jsonl_lines_are_flushed_as_written(tmp_path):
    sink = JsonLinesSink(tmp_path / "live.jsonl")
    sink.write(FrameResult(0, 0.5, {"task": "classify", "name": "Fire"}, {"inference": 1.0}))
    # Readable by another process before the run ends: a crash after this loses nothing.
    assert json.loads((tmp_path / "live.jsonl").read_text())["predictions"]["name"] == "Fire"
    sink.close()


def test_ctrl_c_ends_cleanly_with_the_report(work, tmp_path, monkeypatch, capsys):
    """A real SIGINT while frame 5 is being written: taken between frames, so the report counts
    exactly the frames whose JSON lines were written (an exception raised inside a frame's sink
    writes used to leave it one short)."""
    root, model, clip = work
    original = sinks_mod.ConsoleSink.write

    def interrupt_at_frame_5(self, result):
        if result.index == 5:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, result)

    monkeypatch.setattr(sinks_mod.ConsoleSink, "write", interrupt_at_frame_5)
    out, report_path = tmp_path / "r.jsonl", tmp_path / "report.json"
    assert (
        main(
            [
                "--model",
                str(model),
                "--source",
                str(clip),
                "--output",
                str(out),
                "--report",
                str(report_path),
                "--threads",
                "1",
            ]
        )
        == 130
    )
    report = json.loads(report_path.read_text())
    indices = [r["index"] for r in read_jsonl(out)]
    assert report["interrupted"] and report["stopped_by"] == "Ctrl-C"
    assert report["frames"] == len(indices) and 6 <= len(indices) < FRAMES
    assert indices == list(range(len(indices)))
    assert "stopped by Ctrl-C" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_report_carries_the_source_health(tmp_path):
    """stalls, reconnects and warnings, read from the source with defaults (0, 0, [])."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), 10 * i, np.uint8))
    meta = ModelMeta(
        task="classify", name="j", class_names=["Normal"], input_size=(8, 8), scale=1.0
    )

    def task(outputs, transforms):
        return [{"task": "test"}]

    with open_source(str(tmp_path)) as src, _JitteryBackend(meta) as be:
        report = Pipeline(src, be, task, [_Collect()]).run()
    assert (report["stalls"], report["reconnects"], report["source_warnings"]) == (0, 0, [])
    with open_source(str(tmp_path)) as src, _JitteryBackend(meta) as be:
        src.stalls, src.reconnects, src.warnings = 2, 1, ["clip.mp4: ended at frame 61 of 120"]
        report = Pipeline(src, be, task, [_Collect()]).run()
    assert (report["stalls"], report["reconnects"]) == (2, 1)
    assert report["source_warnings"] == ["clip.mp4: ended at frame 61 of 120"]
    text = format_report(report)
    assert "stalls 2  reconnects 1" in text
    assert "source warning: clip.mp4: ended at frame 61 of 120" in text


def test_a_failing_stage_is_one_error_and_leaves_no_partial_video(
    work, tmp_path, capsys, monkeypatch
):
    root, model, clip = work

    def broken_infer(self, batch):
        from glimmer.runtime.core.errors import GlimmerError

        raise GlimmerError("inference failed: device lost")

    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", broken_infer)
    video = tmp_path / "v.mp4"
    assert (
        run_cli(
            "glimmer-run",
            main,
            ["--model", str(model), "--source", str(clip), "--save", str(video)],
        )
        == 1
    )
    assert capsys.readouterr().err.strip().splitlines() == [
        "glimmer-run: error: inference failed: device lost"
    ]
    assert list(tmp_path.iterdir()) == []


def test_detection_end_to_end_boxes_in_frame_pixels(tmp_path):
    head = np.zeros((1, 6, 4), np.float32)
    head[0, :, 0] = [32, 32, 16, 8, 0.9, 0.0]  # car, xyxy (24, 28, 40, 36) in the input
    head[0, :, 1] = [33, 32, 16, 8, 0.7, 0.0]  # same car, lower score: suppressed
    head[0, :, 2] = [33, 32, 16, 8, 0.0, 0.6]  # a person in the same place: kept (class-aware)
    head[0, :, 3] = [10, 10, 4, 4, 0.1, 0.1]  # below conf
    model = fixed_detector(
        tmp_path / "det.onnx", head, ["car", "person"]
    )  # 64 px, letterboxed, stride 32
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        cv2.imwrite(str(folder / name), np.full((100, 200, 3), 90, np.uint8))
    out = tmp_path / "det.jsonl"
    assert main(["--model", str(model), "--source", str(folder), "--output", str(out)]) == 0
    lines = read_jsonl(out)
    assert [r["index"] for r in lines] == [0, 1]
    dets = lines[0]["predictions"]["detections"]
    assert [(d["name"], d["class"], d["confidence"]) for d in dets] == [
        ("car", 0, 0.9),
        ("person", 1, 0.6),
    ]
    # 200x100 frame -> gain 64/200 = 0.32, 32 rows of content, 16 rows of padding above.
    box = [dets[0]["box"][k] for k in ("x1", "y1", "x2", "y2")]
    assert box == pytest.approx([24 / 0.32, (28 - 16) / 0.32, 40 / 0.32, (36 - 16) / 0.32])


class _Collect(Sink):
    def __init__(self):
        self.indices = []

    def write(self, result):
        self.indices.append(result.index)


def test_pipeline_processes_a_looped_file_in_order_with_memory_bounded_queues(work):
    root, model, clip = work
    sink = _Collect()
    with open_source(str(clip), SourceOptions(loop=3)) as src, OnnxRuntimeBackend(
        model, threads=1
    ) as be:
        pipe = Pipeline(src, be, build_task(be.meta), [sink], queue_size=2)
        report = pipe.run()
    assert sink.indices == list(range(3 * FRAMES)) and report["frames"] == 3 * FRAMES
    assert all(q.maxsize == 2 for q in pipe._queues)


class _JitteryBackend(Backend):
    """Returns each frame's mean after a random delay, so concurrent runs finish out of order."""

    name = "jittery"

    def __init__(self, meta):
        super().__init__()
        self._meta, self._rng = meta, np.random.default_rng(0)

    meta = property(lambda self: self._meta)
    inputs = property(lambda self: [TensorSpec("images", (None, 3, 8, 8), "float32")])
    outputs = property(lambda self: [TensorSpec("mean", (None,), "float32")])

    def _activate(self):
        pass

    def _infer(self, batch):
        time.sleep(float(self._rng.uniform(0, 0.004)))
        return [batch.mean(axis=(1, 2, 3))]


def test_concurrent_inference_threads_still_deliver_results_in_frame_order(tmp_path):
    for i in range(30):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), 5 * i, np.uint8))
    meta = ModelMeta(
        task="classify", name="j", class_names=["Normal"], input_size=(8, 8), scale=1.0
    )
    seen = []

    class Record(Sink):
        def write(self, result):
            seen.append((result.index, result.prediction["value"]))

    def task(outputs, transforms):
        return [{"task": "test", "value": float(outputs[0][0])}]

    with open_source(str(tmp_path)) as src, _JitteryBackend(meta) as be:
        report = Pipeline(src, be, task, [Record()], workers=3, queue_size=2).run()
    assert report["inference_threads"] == 3 and report["frames"] == 30
    assert seen == [(i, pytest.approx(5.0 * i)) for i in range(30)]


def test_onnxruntime_concurrency_follows_threads_and_cores(work, monkeypatch):
    _, model, _ = work
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    with OnnxRuntimeBackend(model, threads=1) as one, OnnxRuntimeBackend(
        model, threads=2
    ) as two, OnnxRuntimeBackend(model) as default:
        assert (one.concurrency, two.concurrency, default.concurrency) == (4, 2, 1)


def test_a_stop_request_ends_a_live_latency_run_between_frames(mjpeg_server):
    """A real SIGINT on a live stream under the latency schedule: the output loop takes it
    between results, reading stops, and the report counts exactly the results written."""
    meta = ModelMeta(
        task="classify", name="j", class_names=["Normal"], input_size=(8, 8), scale=1.0
    )
    written = []

    class InterruptAtFive(Sink):
        def write(self, result):
            written.append(result.index)
            if len(written) == 5:
                os.kill(os.getpid(), signal.SIGINT)

    def task(outputs, transforms):
        return [{"task": "test"}]

    started = time.monotonic()
    with open_source(mjpeg_server.url) as src, _JitteryBackend(meta) as be:
        pipeline = Pipeline(src, be, task, [InterruptAtFive()], schedule="latency")
        report = pipeline.run()
    assert time.monotonic() - started < 30
    assert report["schedule"] == "latency" and report["interrupted"]
    assert report["stopped_by"] == "Ctrl-C" and pipeline.stop_signal == signal.SIGINT
    assert report["frames"] == len(written) >= 5
    assert written == sorted(set(written))
