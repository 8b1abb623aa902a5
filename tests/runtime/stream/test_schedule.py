"""The latency-first schedule on a real MJPEG-over-HTTP stream (a server on 127.0.0.1, see
conftest.py): the newest frame taken, stale frames dropped and counted, no frame twice, clean
shutdown; files still every frame in order under auto; the schedule's settings checked in one
line. Behaviour only: speed targets live in benchmarks/live_latency.py."""

import json
import statistics
import threading
import time

import cv2
import numpy as np
import pytest

from glimmer.runtime.api import run as api_run
from glimmer.runtime.backends.base import Backend, TensorSpec
from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.pipeline import Pipeline
from glimmer.runtime.stream.schedule import NewestFrame, NewestResult
from glimmer.runtime.stream.sinks import Sink
from glimmer.runtime.stream.sources import open_source
from glimmer.runtime.tools.run import main

META = ModelMeta(
    task="classify", name="numbers", class_names=["Normal"], input_size=(64, 64), scale=1.0
)
BOUND_S = 60.0  # no run here may take longer; each normally takes well under 2 s


class NumberReader(Backend):
    """A model that takes ``delay`` seconds a frame (the bottleneck) and answers the number drawn
    in it; each call records that number and the newest frame the source had grabbed by then."""

    name = "numbers"

    def __init__(self, read, delay=0.0, source=None, fail_at=None):
        super().__init__()
        self.read, self.delay, self.source, self.fail_at = read, delay, source, fail_at
        self.calls = []
        self.activate()

    meta = property(lambda self: META)
    inputs = property(lambda self: [TensorSpec("images", (None, 3, 64, 64), "float32")])
    outputs = property(lambda self: [TensorSpec("number", (None,), "float32")])

    def _activate(self):
        pass

    def _infer(self, batch):
        number = self.read(batch[0, 1])
        newest = self.source.grabbed - 1 if self.source is not None else None
        self.calls.append((number, newest))
        if self.fail_at is not None and len(self.calls) > self.fail_at:
            raise GlimmerError("inference failed: device lost")
        time.sleep(self.delay)
        return [np.array([number], np.float32)]


def task(outputs, transforms=()):
    return [{"task": "test", "number": int(outputs[0][0])}]


class Collect(Sink):
    def __init__(self, interrupt_at=None):
        self.results, self.interrupt_at = [], interrupt_at

    def write(self, result):
        self.results.append(result)
        if self.interrupt_at is not None and len(self.results) == self.interrupt_at:
            raise KeyboardInterrupt


def run_bounded(pipeline):
    """``pipeline.run()`` on a thread that must end within BOUND_S; its report, or its error."""
    outcome = {}

    def work():
        try:
            outcome["report"] = pipeline.run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), "the pipeline did not end"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


def glimmer_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("glimmer-")]


def lags(backend):
    """Per inference call: frames the source had grabbed after the one being inferred."""
    return [newest - number for number, newest in backend.calls]


def test_live_stream_newest_frame_taken_stale_dropped_none_twice(mjpeg_server, numbering):
    src = open_source(mjpeg_server.url)
    backend, sink = NumberReader(numbering.read, delay=0.06, source=src), Collect()
    pipe = Pipeline(src, backend, task, [sink], max_frames=12, workers=2)
    report = run_bounded(pipe)
    assert pipe.schedule == "latency" and report["schedule"] == "latency"
    assert report["schedule_requested"] == "auto"
    indices = [r.index for r in sink.results]
    # The frame inferred is the frame reported, and the camera's numbering is kept.
    assert [r.prediction["number"] for r in sink.results] == indices
    assert all(b > a for a, b in zip(indices, indices[1:])), indices  # none twice, in order
    # The newest frame: when inference starts, the grabber has at most a frame it just read.
    assert max(lags(backend)) <= 2 and statistics.median(lags(backend)) <= 1, backend.calls
    # 50 FPS into 2 x 60 ms: a third of the frames are dropped, and every one is counted.
    by = report["frames_dropped_by"]
    assert set(by) == {"source", "schedule", "result"}
    assert report["frames_dropped"] == sum(by.values()) > 0
    assert report["frames"] == len(indices) and 1 <= len(indices) <= 12
    accounted = report["frames"] + report["frames_dropped"]
    assert indices[-1] + 1 <= accounted <= src.grabbed
    age, work = report["stages"]["frame_age"], report["stages"]["processing"]
    for stats in (age, work):
        assert stats["count"] == len(indices) and stats["includes"]
        assert stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert age["median_ms"] >= work["median_ms"] >= 60.0
    assert not glimmer_threads() and src._closed


def test_throughput_schedule_on_the_same_stream_infers_frames_that_waited(mjpeg_server, numbering):
    """The contrast that motivates the latency schedule: queued frames are stale by the time
    they are inferred (the capture thread holds one, the queue another)."""
    src = open_source(mjpeg_server.url)
    backend, sink = NumberReader(numbering.read, delay=0.06, source=src), Collect()
    report = run_bounded(
        Pipeline(src, backend, task, [sink], max_frames=8, workers=1, schedule="throughput")
    )
    assert report["schedule"] == "throughput" and report["frames"] == 8
    assert statistics.median(lags(backend)[2:]) >= 2, backend.calls
    assert report["stages"]["frame_age"]["count"] == 8
    assert not glimmer_threads()


def test_ctrl_c_and_a_failing_stage_end_the_latency_schedule_cleanly(mjpeg_server, numbering):
    src = open_source(mjpeg_server.url)
    sink = Collect(interrupt_at=3)
    backend = NumberReader(numbering.read, 0.02, src)
    report = run_bounded(Pipeline(src, backend, task, [sink], workers=2))
    # the frame interrupted while written is not counted; those in flight are finished
    assert report["interrupted"] and len(sink.results) >= 3 and report["frames"] >= 2
    indices = [r.index for r in sink.results]
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert not glimmer_threads()
    src = open_source(mjpeg_server.url)
    with pytest.raises(GlimmerError, match="device lost"):
        backend = NumberReader(numbering.read, 0.02, src, fail_at=2)
        run_bounded(Pipeline(src, backend, task, [], workers=2))
    assert not glimmer_threads() and src._closed


def test_glimmer_run_on_a_stream_shows_and_reports_the_schedule(mjpeg_server, tmp_path, capsys):
    from tiny_onnx import colour_classifier

    meta = ModelMeta(
        task="classify", name="colours", class_names=["Normal", "Fire"], input_size=(32, 32)
    )
    model = colour_classifier(tmp_path / "m.onnx", np.eye(3, 2), np.zeros(2), meta)
    out, report_path = tmp_path / "r.jsonl", tmp_path / "report.json"
    args = ["--model", str(model), "--source", mjpeg_server.url, "--max-frames", "6"]
    args += ["--output", str(out), "--report", str(report_path), "--threads", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "schedule latency (auto: each stage takes the newest frame" in printed
    assert "frame_age" in printed and "schedule latency" in printed.split("frame_age")[0]
    report = json.loads(report_path.read_text())
    assert report["schedule"] == "latency" and report["frames"] <= 6
    assert report["stages"]["frame_age"]["count"] == report["frames"] > 0
    indices = [json.loads(line)["index"] for line in out.read_text().splitlines()]
    assert len(indices) == report["frames"] and indices == sorted(set(indices))


def test_files_keep_every_frame_in_order_under_auto(tmp_path, numbering):
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), numbering.frame(i, 64, 48))
    sink = Collect()
    with open_source(str(tmp_path)) as src:
        backend = NumberReader(numbering.read)
        pipe = Pipeline(src, backend, task, [sink], workers=2, queue_size=2)
        report = run_bounded(pipe)
    assert pipe.schedule == "throughput" and report["schedule"] == "throughput"
    assert [r.index for r in sink.results] == list(range(20))
    assert [r.prediction["number"] for r in sink.results] == list(range(20))
    assert report["frames_dropped"] == 0 and report["frames_dropped_by"] == {"source": 0}
    assert report["stages"]["frame_age"]["count"] == 0  # media time: no age for a file
    assert report["stages"]["processing"]["count"] == 20


def test_schedule_settings_are_checked_in_one_line(tmp_path, capsys, numbering):
    cv2.imwrite(str(tmp_path / "a.png"), numbering.frame(0, 32, 32))
    config = tmp_path / "deploy.toml"
    config.write_text('[runtime]\nschedule = "latncy"\n')
    model = ["--model", str(tmp_path / "absent.onnx"), "--source", str(tmp_path)]
    cases = [
        (
            ["--config", str(config)] + model,
            f"{config}: key 'runtime.schedule' must be one of auto, latency, throughput, got "
            "'latncy' (did you mean 'latency'?)",
        ),
        (
            model + ["--schedule", "fastest"],
            "--schedule: key 'runtime.schedule' must be one of auto, latency, throughput, got "
            "'fastest'",
        ),
        (
            model + ["--schedule", "latency"],
            f"schedule latency needs a live source (a camera or stream), and {tmp_path} is a "
            "file or folder, whose every frame is processed in order: use schedule auto or "
            "throughput",
        ),
    ]
    for argv, message in cases:
        assert run_cli("glimmer-run", main, argv) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"glimmer-run: error: {message}"]
    with open_source(str(tmp_path)) as src:
        with pytest.raises(GlimmerError, match="^schedule must be one of auto, latency"):
            Pipeline(src, NumberReader(numbering.read), task, schedule="newest")
    with pytest.raises(GlimmerError, match="^schedule must be one of auto, latency"):
        api_run(str(tmp_path), tmp_path / "absent.onnx", schedule="soon")


class _Item:
    def __init__(self, seq):
        self.seq = seq


def test_newest_frame_and_result_replace_and_count_what_they_drop():
    frames, abort = NewestFrame(workers=1, max_frames=2), threading.Event()
    a, b, c = _Item(0), _Item(1), _Item(2)
    frames.put(a)
    frames.put(b)  # a was never taken: dropped
    assert frames.take(0, abort) == (b, False) and frames.dropped == 1
    # One thread, busy for about a second, frames arriving back to back: a newer frame will be
    # there (and preprocessed) long before the thread is free, so c is not worth preparing.
    frames.done(0, {"preprocess": 1.0, "inference": 1000.0})
    frames.put(c)
    assert frames.take(0, abort) == (c, False)
    frames.put(_Item(3))
    assert not frames.claim_ahead(frames._item)
    assert frames.take(0, abort) is None and frames.closed  # max_frames taken
    results = NewestResult(workers=1)
    results.put(_Item(3))
    results.put(_Item(2))  # older than one waiting: dropped
    assert results.take(abort).seq == 3
    results.put(_Item(1))  # older than one written: dropped
    results.put(_Item(5))
    results.put(_Item(6))  # replaces 5, unwritten: dropped
    results.end()
    assert [results.take(abort).seq, results.take(abort)] == [6, None] and results.dropped == 3
