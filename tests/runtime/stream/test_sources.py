"""Sources: URI vocabulary, every frame of a file in order, sorted image folders, globs and list
files, truncated videos reported, the live grabber (newest frame only, drops counted, reconnect with
back-off then a clear error), camera errors. Stalls, bounded opens and Ctrl-C against real servers:
test_live_reliability.py and test_rtsp_server.py."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

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
        "rtsp://cam/x: the stream stopped delivering frames (a read failed) and 3 reconnect "
        "attempts"
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


# -- truncated videos ------------------------------------------------------------------------------


def _clip(path, frames=120, fourcc="MJPG"):
    """A clip of ``frames`` distinct frames (random noise: every JPEG frame has a similar size)."""
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 12.0, (96, 64))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    return path


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", ["clip.avi", "clip.mkv"])
def test_a_truncated_video_is_reported_once_not_ended_silently(tmp_path, capsys, name):
    full = _clip(tmp_path / f"full{Path(name).suffix}")
    with open_source(str(full)) as src:
        assert len(list(src)) == 120
    assert src.warnings == [] and "warning" not in capsys.readouterr().err

    cut = _cut_in_half(_clip(tmp_path / name))
    with open_source(str(cut), SourceOptions(loop=2)) as src:
        read = len(list(src))
    assert 30 < read < 2 * 100  # each play ends about half way
    per_play = read // 2
    message = f"{cut}: read {per_play} of 120 frames the container announced (truncated or damaged)"
    assert src.warnings == [message]
    err = capsys.readouterr().err
    assert err.count("truncated or damaged") == 1 and f"warning: {message}" in err


def test_a_truncated_mp4_without_its_index_is_one_clear_error(tmp_path):
    cut = _cut_in_half(_clip(tmp_path / "clip.mp4", fourcc="mp4v"))  # the moov atom is at the end
    with pytest.raises(GlimmerError, match=r"clip\.mp4: OpenCV cannot decode this video"):
        open_source(str(cut))


def test_glimmer_run_on_a_truncated_clip_warns_and_reports_it(tmp_path, capsys):
    from tiny_onnx import colour_classifier

    from glimmer.runtime.core.metadata import ModelMeta
    from glimmer.runtime.tools.run import main

    meta = ModelMeta(task="classify", name="c", class_names=["Normal", "Fire"], input_size=(32, 32))
    model = colour_classifier(tmp_path / "m.onnx", np.eye(3, 2), np.zeros(2), meta)
    cut = _cut_in_half(_clip(tmp_path / "clip.avi"))
    report_path = tmp_path / "report.json"
    args = ["--model", model, "--source", cut, "--report", report_path, "--threads", "1"]
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    assert "frames the container announced (truncated or damaged)" in err
    report = json.loads(report_path.read_text())
    assert 0 < report["frames"] < 120
    assert report["source_warnings"] == [
        f"{cut}: read {report['frames']} of 120 frames the container announced "
        "(truncated or damaged)"
    ]


# -- glob and list sources -------------------------------------------------------------------------


@pytest.fixture
def image_tree(tmp_path):
    """imgs/{b,a,c}.jpg, imgs/sub/d.jpg, imgs/notes.md, and clip.avi; each image a flat colour
    whose blue channel is its number (a=1, b=2, c=3, d=4)."""
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for number, rel in enumerate(["a.jpg", "b.jpg", "c.jpg", "sub/d.jpg"], start=1):
        cv2.imwrite(str(imgs / rel), np.full((16, 16, 3), (number * 40, 0, 0), np.uint8))
    (imgs / "notes.md").write_text("not an image")
    _clip(tmp_path / "clip.avi", frames=3)
    return tmp_path


def _numbers(src):
    return [round(int(frame[0, 0, 0]) / 40) for frame, _, _ in src]


def test_a_glob_opens_the_matching_images_sorted(image_tree):
    pattern = str(image_tree / "imgs" / "*.jpg")
    assert parse_uri(pattern) == ("glob", pattern)
    with open_source(pattern) as src:
        assert _numbers(src) == [1, 2, 3] and not src.live
    with open_source(str(image_tree / "imgs" / "**" / "*.jpg")) as src:
        assert _numbers(src) == [1, 2, 3, 4]
    with open_source(str(image_tree / "imgs" / "[ab].*")) as src:  # notes.md ignored
        assert _numbers(src) == [1, 2]
    missing = str(image_tree / "imgs" / "*.png")
    with pytest.raises(GlimmerError) as info:
        open_source(missing)
    assert str(info.value) == f"source {missing!r}: the pattern matches no file"
    with pytest.raises(GlimmerError, match=r"matches 1 files but no image \(\.png, \.jpg"):
        open_source(str(image_tree / "imgs" / "*.md"))


def test_a_list_file_opens_its_images_in_order_relative_to_itself(image_tree):
    listing = image_tree / "list.txt"
    listing.write_text(
        "# flight 12, camera 2\n"
        "imgs/c.jpg\n"
        "\n"
        f"  {image_tree / 'imgs' / 'a.jpg'}  \n"  # absolute, padded
        "   # an indented comment\n"
        "imgs/sub/d.jpg\n"
    )
    assert parse_uri(str(listing)) == ("list", str(listing))
    with open_source(str(listing)) as src:
        assert _numbers(src) == [3, 1, 4] and src.description == str(listing)


@pytest.mark.parametrize(
    "line, error",
    [
        ("imgs/missing.jpg", "list.txt:3: imgs/missing.jpg: no such file"),
        ("clip.avi", "list.txt:3: clip.avi is a video; a list source holds images only"),
        ("imgs/notes.md", "list.txt:3: imgs/notes.md is not an image (.png, .jpg"),
        ("imgs/sub", "list.txt:3: imgs/sub is a folder; a list names one image per line"),
    ],
)
def test_a_bad_list_line_is_one_error_naming_file_and_line(image_tree, line, error):
    listing = image_tree / "list.txt"
    listing.write_text(f"imgs/a.jpg\n# next one is wrong\n{line}\nimgs/b.jpg\n")
    with pytest.raises(GlimmerError) as info:
        open_source(str(listing))
    assert str(info.value).startswith(f"{image_tree / error}")


def test_an_empty_list_is_an_error(image_tree):
    listing = image_tree / "list.txt"
    listing.write_text("# nothing yet\n\n")
    with pytest.raises(GlimmerError, match=r"list\.txt: lists no image"):
        open_source(str(listing))


# -- the live watchdog, with captures that hang as a read stuck in C does --------------------------


class HangingCapture(FakeCapture):
    """Delivers ``frames`` numbered frames, then its read blocks (as a read stuck inside OpenCV
    does: nothing in Python can interrupt it) until ``unblock`` is set (at the latest when the
    test ends, so no hung reader outlives it)."""

    made = []

    def __init__(self, frames, first=0):
        super().__init__(frames=None, period=0.002)
        HangingCapture.made.append(self)
        self.limit, self.count = frames, first
        self.first = first
        self.unblock = threading.Event()
        self.released_while_reading = False
        self.reading = False

    def read(self):
        if self.count - self.first >= self.limit:
            self.reading = True
            self.unblock.wait()
            self.reading = False
        return super().read()

    def release(self):
        self.released_while_reading = self.reading
        super().release()


@pytest.fixture(autouse=True)
def _unblock_hung_reads():
    yield
    while HangingCapture.made:
        HangingCapture.made.pop().unblock.set()


def fast(**kw):
    base = dict(stall_timeout_s=0.3, connect_timeout_s=1.0, retries=3, backoff_s=0.01)
    base.update(kw)
    return SourceOptions(**base)


def new_threads(name, before):
    return [t for t in threading.enumerate() if t.name == name and t not in before]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_stalled_read_is_abandoned_and_the_stream_reconnects(capsys):
    caps, before = [], set(threading.enumerate())

    def opener():
        caps.append(HangingCapture(frames=5 if not caps else 10**6, first=1000 * len(caps)))
        return caps[-1]

    src = LiveSource(opener, "rtsp://cam/x", fast())
    numbers = []
    started = time.monotonic()
    for frame, _, _ in src:
        numbers.append(int(frame[0, 0, 0]))
        if numbers[-1] > 1000 + 5:  # frames of the second capture
            break
    took = time.monotonic() - started
    assert src.stalls == 1 and src.reconnects == 1 and len(caps) == 2
    assert min(numbers) >= 1 and max(numbers) > 1005 and took < 5.0
    # the hung read still holds the first capture: never released under it, released after it
    assert not caps[0].released
    caps[0].unblock.set()
    wait_for(lambda: caps[0].released)
    assert not caps[0].released_while_reading
    err = []
    wait_for(lambda: err.extend(capsys.readouterr().err.splitlines()) or len(err) == 2)
    src.close()
    assert caps[1].released and not new_threads("glimmer-reader", before)
    err += capsys.readouterr().err.splitlines()
    assert (
        err[0] == "stream stalled: no frame from rtsp://cam/x for 0.3 s; reconnecting (attempt 1/3)"
    )
    assert err[1].startswith("stream resumed: rtsp://cam/x delivers frames again, ")
    assert err[1].endswith(" s after its last frame (reconnect attempt 1)") and len(err) == 2


def test_a_stall_then_failed_reconnects_end_with_an_error_naming_what_was_tried(capsys):
    calls = []

    def opener():
        calls.append(time.monotonic())
        if len(calls) == 1:
            return HangingCapture(frames=3)
        if len(calls) == 2:
            return HangingCapture(frames=0)  # opens, then never delivers
        raise GlimmerError("rtsp://cam/x: cannot open the stream")

    src = LiveSource(opener, "rtsp://cam/x", fast())
    started = time.monotonic()
    with pytest.raises(GlimmerError) as info:
        list(src)
    src.close()
    took = time.monotonic() - started
    assert len(calls) == 4 and src.stalls == 1 and src.reconnects == 1
    # one stall timeout, a second one after the reconnect that delivered nothing, back-offs
    assert 0.6 <= took < 5.0
    assert str(info.value).startswith(
        "rtsp://cam/x: the stream stopped delivering frames (no frame for 0.3 s) and 3 reconnect "
        "attempts over "
    )
    assert str(info.value).endswith(" s failed (last: cannot open the stream)")
    assert capsys.readouterr().err.splitlines() == [
        "stream stalled: no frame from rtsp://cam/x for 0.3 s; reconnecting (attempt 1/3)",
        "reconnect to rtsp://cam/x failed (opened, then no frame for 0.3 s); reconnecting "
        "(attempt 2/3)",
        "reconnect to rtsp://cam/x failed (cannot open the stream); reconnecting (attempt 3/3)",
    ]


def test_no_reconnect_when_retries_is_zero():
    src = LiveSource(lambda: HangingCapture(frames=2), "camera 0", fast(retries=0))
    with pytest.raises(GlimmerError) as info:
        list(src)
    src.close()
    assert str(info.value) == (
        "camera 0: the stream stopped delivering frames (no frame for 0.3 s) and reconnecting is "
        "off (retries 0)"
    )
    assert src.stalls == 1 and src.reconnects == 0


def test_an_open_that_never_returns_is_bounded_and_its_late_capture_released():
    gate, late = threading.Event(), FakeCapture()
    before = set(threading.enumerate())

    def opener():
        gate.wait()
        return late

    started = time.monotonic()
    with pytest.raises(GlimmerError) as info:
        LiveSource(opener, "rtsp://cam/x", fast(connect_timeout_s=0.4))
    assert 0.4 <= time.monotonic() - started < 3.0
    assert str(info.value).startswith(
        "rtsp://cam/x: no answer within 0.4 s (connect timeout); check the address"
    )
    gate.set()
    wait_for(lambda: late.released)
    wait_for(lambda: not new_threads("glimmer-open", before))


def test_ctrl_c_during_a_hung_open_reaches_the_main_thread_at_once():
    import _thread

    gate, late = threading.Event(), FakeCapture()

    def opener():
        gate.wait()
        return late

    # interrupt_main raises KeyboardInterrupt in the main thread as a SIGINT does
    threading.Timer(0.3, _thread.interrupt_main).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        capture.open_bounded(opener, "rtsp://cam/x", timeout_s=30.0)
    assert time.monotonic() - started < 2.0
    gate.set()
    wait_for(lambda: late.released)  # abandoned: released by the helper, never handed out


def test_timeouts_are_checked_and_passed_to_ffmpeg_where_opencv_has_them():
    with pytest.raises(GlimmerError, match="stall_timeout_s must be more than 0, got 0"):
        SourceOptions(stall_timeout_s=0)
    with pytest.raises(GlimmerError, match="connect_timeout_s must be more than 0"):
        SourceOptions(connect_timeout_s=-1.0)
    with pytest.raises(GlimmerError, match="retries must be 0 or more"):
        SourceOptions(retries=-1)
    opts = SourceOptions(stall_timeout_s=2.0, connect_timeout_s=3.0)
    if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # OpenCV 4.5.4 and later (both venvs here)
        # ours fire first; FFmpeg's end the abandoned call soon after
        assert capture.ffmpeg_timeouts(opts) == [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            4000,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            4000,
        ]
    else:
        assert capture.ffmpeg_timeouts(opts) == []


def test_closing_during_a_hung_reconnect_returns_at_once_and_leaks_nothing():
    gate, caps = threading.Event(), []

    def opener():
        if caps:  # the reconnect: the camera accepted, then hangs
            gate.wait()
        caps.append(HangingCapture(frames=1))
        return caps[-1]

    src = LiveSource(opener, "rtsp://cam/x", fast(connect_timeout_s=30.0))
    next(src)
    wait_for(lambda: [t for t in threading.enumerate() if t.name == "glimmer-open"])
    started = time.monotonic()
    src.close()
    assert time.monotonic() - started < 1.5 and src.stalls == 1 and src.reconnects == 0
    caps[0].unblock.set()  # the abandoned first read returns: its capture is released then
    gate.set()  # the abandoned open finishes: its capture is released, never handed out
    wait_for(lambda: len(caps) == 2 and caps[0].released and caps[1].released)
