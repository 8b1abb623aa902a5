"""Sources: URI vocabulary, every frame of a file in order, sorted image folders, the live grabber
(newest frame only, drops counted, reconnect with back-off then a clear error), camera errors."""

import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.stream import capture, sources
from glimmer.runtime.stream.sources import LiveSource, SourceOptions, open_source, parse_uri
from glimmer.train.synthetic import make_scene_video, render_scene


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    make_scene_video(
        path,
        ["Fire", "Flood", "Normal"],
        frames_per_label=6,
        size=(96, 64),
        fps=12.0,
        fourcc="MJPG",
    )
    return path


def test_uri_vocabulary(tmp_path, clip):
    (tmp_path / "a.png").write_bytes(
        cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    )
    assert parse_uri("0") == ("v4l2", "0")
    assert parse_uri("csi://1") == ("csi", "1")
    assert parse_uri("v4l2:///dev/video2") == ("v4l2", "/dev/video2")
    assert parse_uri("/dev/video3") == ("v4l2", "/dev/video3")
    assert parse_uri("rtsp://u:p@cam:554/live") == ("network", "rtsp://u:p@cam:554/live")
    assert parse_uri(f"file://{clip}") == ("video", str(clip))
    assert parse_uri(str(tmp_path / "a.png")) == ("image", str(tmp_path / "a.png"))
    assert parse_uri(str(tmp_path)) == ("folder", str(tmp_path))
    with pytest.raises(GlimmerError, match="no such file or folder"):
        parse_uri(str(tmp_path / "missing.mp4"))
    with pytest.raises(GlimmerError, match="expected csi://N"):
        parse_uri("csi://front")
    assert capture.redact("rtsp://admin:secret@cam/x") == "rtsp://admin:***@cam/x"


def test_video_file_yields_every_frame_in_order(clip):
    reference = cv2.VideoCapture(str(clip))
    expected = []
    while True:
        ok, frame = reference.read()
        if not ok:
            break
        expected.append(frame)
    reference.release()
    assert len(expected) == 18
    with open_source(str(clip)) as src:
        got = list(src)
    assert [i for _, _, i in got] == list(range(18))
    assert [t for _, t, _ in got] == pytest.approx([i / 12.0 for i in range(18)])
    assert all(np.array_equal(f, e) for (f, _, _), e in zip(got, expected))
    assert not src.live and src.dropped == 0 and src.length == 18


def test_video_loop_and_flip(clip):
    with open_source(str(clip), SourceOptions(loop=2)) as src:
        frames = list(src)
    assert [i for _, _, i in frames] == list(range(36))
    assert np.array_equal(frames[0][0], frames[18][0])
    with open_source(str(clip), SourceOptions(flip="horizontal")) as src:
        flipped = next(src)[0]
    assert np.array_equal(flipped, frames[0][0][:, ::-1])


def test_image_folder_sorted_and_undecodable_skipped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = {name: render_scene("Fire", rng, 32) for name in ("c.png", "a.jpg", "b.png")}
    for name, img in images.items():
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(str(tmp_path)) as src:
        got = list(src)
    assert [i for _, _, i in got] == [0, 1, 2]
    assert np.array_equal(got[2][0], images["c.png"]) and got[0][0].shape == (32, 32, 3)
    assert "broken.png: cannot decode the image, skipped" in capsys.readouterr().err
    with open_source(str(tmp_path / "b.png")) as one:
        assert len(list(one)) == 1


class FakeCapture:
    """A camera that produces numbered frames quickly, then optionally stops delivering."""

    def __init__(self, frames=None, period=0.001):
        self.frames, self.period, self.count = frames, period, 0
        self.released = False

    def read(self):
        time.sleep(self.period)
        if self.frames is not None and self.count >= self.frames:
            return False, None
        self.count += 1
        return True, np.full((4, 4, 3), self.count, np.int64)  # the frame carries its number

    def get(self, prop):
        return 30.0

    def release(self):
        self.released = True


def test_live_source_keeps_only_the_newest_frame_and_counts_drops():
    cap = FakeCapture(period=0.001)
    src = LiveSource(lambda: cap, "fake camera")
    seen, indices = [], []
    for frame, _, index in src:
        seen.append(int(frame[0, 0, 0]))
        indices.append(index)
        time.sleep(0.02)  # a slow consumer: the grabber overwrites what it has no time for
        if len(seen) == 10:
            break
    src.close()
    assert src.live and len(seen) == 10
    assert all(b > a for a, b in zip(seen, seen[1:]))
    # The index is the frame's number among those grabbed: gaps are the dropped frames.
    assert indices == [n - 1 for n in seen] and src.grabbed >= seen[-1]
    # Every grabbed frame older than the last one delivered was either delivered or dropped.
    assert src.dropped >= seen[-1] - len(seen) > 0
    assert cap.released


def test_live_stream_reconnects_with_backoff_then_fails_clearly():
    opened = []

    def opener():
        if len(opened) >= 2:
            raise GlimmerError("cannot open the stream")
        opened.append(FakeCapture(frames=3))
        return opened[-1]

    opts = SourceOptions(retries=3, backoff_s=0.01, max_backoff_s=0.02)
    src = LiveSource(opener, "rtsp://cam/x", opts)
    got = []
    with pytest.raises(GlimmerError) as info:
        for frame, _, _ in src:
            got.append(frame)
    src.close()
    assert src.reconnects == 1 and len(opened) == 2 and len(got) >= 1
    message = str(info.value)
    assert message.startswith(
        "rtsp://cam/x: the stream stopped delivering frames and 3 reconnect attempts"
    )
    assert message.endswith("s failed (last: cannot open the stream)")


def test_closing_a_live_source_wakes_a_waiting_reader():
    cap = FakeCapture(frames=0)  # never delivers; reconnects keep it waiting
    src = LiveSource(lambda: cap, "quiet camera", SourceOptions(retries=100, backoff_s=0.05))
    result = []
    reader = threading.Thread(target=lambda: result.append(list(src)))
    reader.start()
    time.sleep(0.1)
    src.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and result == [[]]


def test_csi_needs_gstreamer_and_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(sources, "gstreamer_available", lambda: False)
    with pytest.raises(GlimmerError) as info:
        open_source("csi://0")
    assert "needs OpenCV built with GStreamer" in str(info.value)
    assert "JetPack's OpenCV" in str(info.value)
    pipeline = capture.csi_pipeline(1, SourceOptions(width=640, height=480, flip="rotate-180"))
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=640")
    assert "nvvidconv flip-method=2" in pipeline
    assert pipeline.endswith("appsink drop=1 max-buffers=1 sync=false")


def test_absent_camera_is_one_clear_line_and_exit_1(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "glimmer.runtime.tools.run",
            "--model",
            str(tmp_path / "m.onnx"),
            "--camera",
            "57",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("glimmer-run: error: camera 57: cannot open the camera")
    assert "Traceback" not in proc.stderr
