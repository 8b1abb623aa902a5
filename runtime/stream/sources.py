"""Frame sources in jetson-inference's URI vocabulary (docs/runtime.md, "Sources").

    csi://N                    Jetson CSI camera through GStreamer (nvarguscamerasrc)
    N, v4l2:///dev/videoN,
    /dev/videoN                USB / V4L2 camera
    rtsp://user:pass@host/path network camera (also rtsps, rtmp, http(s), udp)
    clip.mp4, file://clip.mp4  video file (mp4, mkv, avi, ...)
    photo.jpg                  one image
    folder/                    a folder of images, sorted by name
    'imgs/*.jpg', 'a/**/*.png' the images a glob matches, sorted (quoted: the shell leaves it)
    list.txt                   the images it lists, one per line, relative to it (# comments)

Every source iterates ``(frame, timestamp, index)`` (BGR uint8, seconds, 0-based) and has
``close()``. Files yield every frame in order (``loop`` plays them again); live sources run a
grabber thread that keeps only the newest frame and counts the ones it overwrote, because buffered
stale frames are what makes latency grow on live streams (docs/runtime.md, "Recurring problems").
A live frame's index is its number among the frames the grabber read, so a gap is a dropped frame. A
live stream that stalls (no frame for ``stall_timeout_s``) or fails is reopened with bounded
exponential back-off, each open bounded by ``connect_timeout_s``, then ends with a clear error.
"""

import abc
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import (
    glob_images,
    is_glob,
    is_image,
    list_images,
    read_image,
    read_image_list,
)
from glimmer.runtime.stream.capture import (
    SourceOptions,
    _capture_opener,
    _cv2,
    _quiet_opencv,
    _video_devices,
    csi_pipeline,
    gstreamer_available,
    open_bounded,
    redact,
)

Frame = Tuple[np.ndarray, float, int]

VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://")
_CV2_FLIP = {"horizontal": 1, "vertical": 0, "rotate-180": -1}
# containers whose frame count is a bit-rate estimate or absent: not checked for truncation
_UNCOUNTED_EXTS = (".ts", ".mpg", ".mpeg", ".h264")


class Source(abc.ABC):
    """An iterator of ``(frame, timestamp, index)`` with ``close()``; also a context manager."""

    #: live sources drop stale frames; file sources deliver every frame
    live = False
    #: unrelated still images (a folder, a list): each judged alone, results carry the file name
    still = False

    def __init__(self, description: str) -> None:
        self.description = description
        self._index = 0
        self._closed = False
        # read by the run report: live interruptions, reopens, and lines worth keeping
        self.stalls = 0
        self.reconnects = 0
        self.warnings: List[str] = []

    @property
    def dropped(self) -> int:
        """Frames the source discarded because newer ones arrived first."""
        return 0

    @property
    def length(self) -> Optional[int]:
        """Frames this source will deliver, when known (files), for progress bars."""
        return None

    @property
    def fps(self) -> Optional[float]:
        """The source's nominal frame rate, when it has one."""
        return None

    def name_of(self, index: int) -> Optional[str]:
        """The file behind the frame emitted with ``index``, for still sources; else None."""
        return None

    def __iter__(self) -> "Source":
        return self

    @abc.abstractmethod
    def __next__(self) -> Frame:
        """The next frame; ``StopIteration`` at the end, :class:`GlimmerError` on a lost stream."""

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _emit(self, frame: np.ndarray, timestamp: float) -> Frame:
        index = self._index
        self._index += 1
        return frame, timestamp, index


def _flipped(frame: np.ndarray, flip: str) -> np.ndarray:
    return frame if flip == "none" else _cv2().flip(frame, _CV2_FLIP[flip])


class VideoFileSource(Source):
    """Every frame of a video file, in order; timestamps are media time (index / the file's
    rate). A play that ends short of the frame count the container announced is reported once as
    truncated or damaged (stderr and ``warnings``), since OpenCV just ends such a file early."""

    def __init__(self, path: Path, options: Optional[SourceOptions] = None) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.options = options or SourceOptions()
        self._plays = 0
        self._read_in_play = 0
        self._short_reported = False
        self._cap = self._open()
        self._rate = float(self._cap.get(_cv2().CAP_PROP_FPS) or 0.0)
        self._count = int(self._cap.get(_cv2().CAP_PROP_FRAME_COUNT) or 0)

    def _open(self):
        cv2 = _cv2()
        with _quiet_opencv():
            cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise GlimmerError(
                f"{self.path}: OpenCV cannot decode this video (codec or container "
                "not supported by this OpenCV build, or the file is damaged)"
            )
        return cap

    @property
    def fps(self) -> Optional[float]:
        return self._rate or None

    @property
    def length(self) -> Optional[int]:
        if not self._count or self.options.loop == 0:
            return None
        return self._count * self.options.loop

    def __next__(self) -> Frame:
        while not self._closed:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                self._read_in_play += 1
                timestamp = self._index / self._rate if self._rate else time.time()
                return self._emit(_flipped(frame, self.options.flip), timestamp)
            self._check_complete()
            self._plays += 1
            self._read_in_play = 0
            if self.options.loop and self._plays >= self.options.loop:
                break
            if self._index == 0:
                raise GlimmerError(f"{self.path}: the video holds no decodable frame")
            # Reopen rather than seek to 0: seeking is unreliable for some containers and codecs.
            self._cap.release()
            self._cap = self._open()
        raise StopIteration

    def _check_complete(self) -> None:
        """Warn (once) when a play ended short of the container's frame count.

        The count is exact where the container records it (AVI, MP4, MOV) and duration x rate
        where it does not (MKV, WebM), which can be off by a rounded frame or two: a shortfall up
        to max(2 frames, 1 %) is not reported. MPEG streams and raw H.264 carry no count (FFmpeg
        estimates their duration from the bit rate), so they are not checked.
        """
        count, read = self._count, self._read_in_play
        if self._short_reported or count <= 0 or self.path.suffix.lower() in _UNCOUNTED_EXTS:
            return
        if count - read > max(2, count // 100):
            self._short_reported = True
            message = (
                f"{self.path}: read {read} of {count} frames the container announced "
                "(truncated or damaged)"
            )
            self.warnings.append(message)
            _say(f"warning: {message}")

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()


class ImageListSource(Source):
    """One image or a sorted folder of images; undecodable files are skipped with a warning."""

    still = True

    def __init__(
        self, paths: List[Path], description: str, options: Optional[SourceOptions] = None
    ) -> None:
        super().__init__(description)
        if not paths:
            raise GlimmerError(f"{description}: no images found")
        self.paths = list(paths)
        self.options = options or SourceOptions()
        self.skipped: List[Path] = []
        self._cursor = 0
        self._emitted: List[Path] = []  # [index] -> the path as given (shared, not copied)

    @property
    def length(self) -> Optional[int]:
        return None if self.options.loop == 0 else len(self.paths) * self.options.loop

    def __next__(self) -> Frame:
        total = None if self.options.loop == 0 else len(self.paths) * self.options.loop
        while not self._closed and (total is None or self._cursor < total):
            path = self.paths[self._cursor % len(self.paths)]
            self._cursor += 1
            frame = read_image(path)
            if frame is None:
                if path not in self.skipped:
                    self.skipped.append(path)
                    print(f"warning: {path}: cannot decode the image, skipped", file=sys.stderr)
                if len(self.skipped) == len(self.paths):
                    raise GlimmerError(f"{self.description}: none of the images can be decoded")
                continue
            self._emitted.append(path)  # skipped images get no index, so this stays aligned
            return self._emit(_flipped(frame, self.options.flip), time.time())
        raise StopIteration

    def name_of(self, index: int) -> Optional[str]:
        return str(self._emitted[index]) if 0 <= index < len(self._emitted) else None


class _Reader:
    """Reads one capture on its own thread until stopped or a read fails.

    A read stuck inside OpenCV cannot be interrupted from Python, so a stalled reader is abandoned,
    never joined: it releases its capture itself once the read returns (FFmpeg's read timeout
    bounds that where OpenCV has one), so no capture is released under a read in flight.
    """

    def __init__(
        self,
        cap: Any,
        deliver: Callable[["_Reader", np.ndarray], None],
        done: Callable[[], None],
    ) -> None:
        self.cap = cap
        self.stop = threading.Event()
        self.failed = False
        self._deliver = deliver
        self._done = done
        self.thread = threading.Thread(target=self._run, name="glimmer-reader", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                ok, frame = self.cap.read()
                if self.stop.is_set():
                    break
                if not ok or frame is None:
                    self.failed = True
                    break
                self._deliver(self, frame)
        except Exception:  # noqa: BLE001 - a backend error ends the stream as a failed read does
            self.failed = True
        finally:
            self.cap.release()
            self._done()


class LiveSource(Source):
    """A camera or stream read by a reader thread that keeps only the newest frame.

    ``opener`` returns an opened ``cv2.VideoCapture``-like object or raises :class:`GlimmerError`;
    it runs on a helper thread bounded by ``connect_timeout_s`` (Ctrl-C is never stuck behind it)
    and again for each reconnect. A watchdog thread (``glimmer-grabber``) reconnects when no frame
    came for ``stall_timeout_s`` or a read failed, with exponential back-off, and ends the stream
    with a :class:`GlimmerError` after ``retries`` attempts in a row without a frame. Each
    interruption is one line on stderr and one of ``stalls``; each reopen one of ``reconnects``.
    """

    live = True

    def __init__(
        self,
        opener: Callable[[], Any],
        description: str,
        options: Optional[SourceOptions] = None,
        post_flip: bool = True,
    ) -> None:
        super().__init__(description)
        self.options = options or SourceOptions()
        self._opener = opener
        self._flip = self.options.flip if post_flip else "none"
        cap = open_bounded(opener, description, self.options.connect_timeout_s)
        # Asked once, before a reader starts: captures are not safe to query during a read.
        self._rate = float(cap.get(_cv2().CAP_PROP_FPS) or 0.0)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Optional[Frame] = None
        self._error: Optional[GlimmerError] = None
        self._dropped = 0
        self._grabbed = 0
        self._reader: Optional[_Reader] = None
        self._grabbed_at_open = 0
        self._last_frame = time.monotonic()
        self._start_reader(cap)
        self._thread = threading.Thread(target=self._watch, name="glimmer-grabber", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def fps(self) -> Optional[float]:
        return self._rate or None

    @property
    def grabbed(self) -> int:
        """Frames read from the camera so far; the newest one's index is ``grabbed - 1``."""
        return self._grabbed

    def _start_reader(self, cap: Any) -> None:
        reader = _Reader(cap, self._deliver, self._wake)
        with self._cond:
            self._reader = reader
            self._grabbed_at_open = self._grabbed
            self._last_frame = time.monotonic()  # the first frame gets a full stall timeout too
        reader.thread.start()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _deliver(self, reader: _Reader, frame: np.ndarray) -> None:
        stamp = time.time()
        frame = _flipped(frame, self._flip)
        with self._cond:
            if reader is not self._reader:
                return  # a late frame from an abandoned reader
            if self._latest is not None:
                self._dropped += 1
            self._latest = (frame, stamp, self._grabbed)
            self._grabbed += 1
            self._last_frame = time.monotonic()
            self._cond.notify_all()

    def _next_event(self, after_reconnect: bool) -> Optional[str]:
        """Wait for ``resumed`` (a first frame after a reconnect), ``lost`` (a read failed) or
        ``stalled`` (no frame for the stall timeout); None once closing."""
        stall = self.options.stall_timeout_s
        with self._cond:
            while not self._stop.is_set() and self._reader is not None:
                if after_reconnect and self._grabbed > self._grabbed_at_open:
                    return "resumed"
                if self._reader.failed:
                    return "lost"
                idle = time.monotonic() - self._last_frame
                if idle >= stall:
                    return "stalled"
                self._cond.wait(min(stall - idle, 0.25))
        return None

    def _abandon_reader(self) -> None:
        with self._cond:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop.set()  # it releases its capture when its read returns

    def _watch(self) -> None:
        """The watchdog: reconnect on a stall or a failed read, give up after ``retries``
        attempts without a frame."""
        opts, name = self.options, self.description
        attempt = 0  # reconnect attempts since the stream last delivered a frame
        delay, since, last_seen, what, last, line = opts.backoff_s, 0.0, 0.0, "", "", ""
        while True:
            event = self._next_event(after_reconnect=attempt > 0)
            if event is None:
                return
            if event == "resumed":
                _say(
                    f"stream resumed: {name} delivers frames again, "
                    f"{time.monotonic() - last_seen:.1f} s after its last frame (reconnect "
                    f"attempt {attempt})"
                )
                attempt = 0
                continue
            self._abandon_reader()
            stalled = event == "stalled"
            if attempt == 0:  # a new interruption
                self.stalls += 1
                delay, since, last_seen = opts.backoff_s, time.monotonic(), self._last_frame
                what = f"no frame for {opts.stall_timeout_s:.1f} s" if stalled else "a read failed"
                last = what
                line = (
                    f"stream stalled: no frame from {name} for {opts.stall_timeout_s:.1f} s"
                    if stalled
                    else f"stream lost: {name} stopped delivering frames (a read failed)"
                )
            else:  # the reconnect opened, then delivered nothing
                last = "opened, then " + (
                    f"no frame for {opts.stall_timeout_s:.1f} s" if stalled else "a read failed"
                )
                line = f"reconnect to {name} failed ({last})"
            cap = None
            while cap is None:
                if attempt >= opts.retries:
                    self._fail(what, attempt, time.monotonic() - since, last)
                    return
                attempt += 1
                _say(f"{line}; reconnecting (attempt {attempt}/{opts.retries})")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2.0, opts.max_backoff_s)
                try:
                    cap = open_bounded(self._opener, name, opts.connect_timeout_s, self._stop)
                except GlimmerError as exc:
                    last = _strip_prefix(str(exc), f"{name}: ")
                    line = f"reconnect to {name} failed ({last})"
                    continue
                if cap is None:  # closing
                    return
            self.reconnects += 1
            self._start_reader(cap)

    def _fail(self, what: str, attempts: int, seconds: float, last: str) -> None:
        tried = (
            f"{attempts} reconnect attempts over {seconds:.1f} s failed (last: {last})"
            if attempts
            else "reconnecting is off (retries 0)"
        )
        with self._cond:
            self._error = GlimmerError(
                f"{self.description}: the stream stopped delivering frames ({what}) and {tried}"
            )
            self._cond.notify_all()

    def __next__(self) -> Frame:
        with self._cond:
            while self._latest is None and self._error is None and not self._closed:
                self._cond.wait(0.25)
            if self._latest is None:
                if self._error is not None:
                    raise self._error
                raise StopIteration
            latest, self._latest = self._latest, None
        return latest

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        reader = self._reader
        if reader is not None:
            # The reader releases its capture: releasing under a read still in flight can crash
            # some capture backends. A read hung in C is left to return on its own.
            reader.stop.set()
            reader.thread.join(timeout=1.0)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


# -- URI parsing and opening ---------------------------------------------------------------------


def parse_uri(uri: str) -> Tuple[str, str]:
    """``(kind, target)`` with kind one of csi, v4l2, network, video, image, folder, glob, list.

    Decides from the text alone except for plain paths, which are looked at on disk.
    """
    text = str(uri).strip()
    if text.isdigit():
        return "v4l2", text
    if text.startswith("csi://"):
        sensor = text[len("csi://") :]
        if not sensor.isdigit():
            raise GlimmerError(f"source {text!r}: expected csi://N with N the sensor id")
        return "csi", sensor
    if text.startswith("v4l2://"):
        device = text[len("v4l2://") :]
        if not device:
            raise GlimmerError(f"source {text!r}: expected v4l2:///dev/videoN")
        return "v4l2", device
    if re.match(r"^/dev/video\d+$", text):
        return "v4l2", text
    if text.lower().startswith(NETWORK_SCHEMES):
        return "network", text
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if not path.exists() and is_glob(text):  # a file whose name holds "[" still opens as itself
        return "glob", text
    if not path.exists():
        raise GlimmerError(
            f"source {text}: no such file or folder (cameras: --camera N, csi://N, "
            "v4l2:///dev/videoN; streams: rtsp://...)"
        )
    if is_image(path):
        return "image", str(path)
    if path.suffix.lower() == ".txt":
        return "list", str(path)
    return "video", str(path)


def open_source(uri: str, options: Optional[SourceOptions] = None) -> Source:
    """Open ``uri`` (see the module docstring); errors name the source and the likely fix."""
    options = options or SourceOptions()
    kind, target = parse_uri(uri)
    if kind == "video":
        return VideoFileSource(Path(target), options)
    if kind == "image":
        return ImageListSource([Path(target)], target, options)
    if kind == "folder":
        return ImageListSource(list_images(Path(target), recursive=False), target, options)
    if kind == "glob":
        return ImageListSource(glob_images(target), target, options)
    if kind == "list":
        return ImageListSource(read_image_list(Path(target), VIDEO_EXTS), target, options)
    cv2 = _cv2()
    linux = sys.platform.startswith("linux")
    if kind == "csi":
        if not gstreamer_available():
            raise GlimmerError(
                f"csi://{target} needs OpenCV built with GStreamer, and the installed OpenCV "
                f"({cv2.__version__}, {Path(cv2.__file__).parent}) has none: on a Jetson use "
                "JetPack's OpenCV (apt install python3-opencv, or the l4t-jetpack container) and "
                "remove the pip wheels (pip uninstall opencv-python opencv-python-headless)"
            )
        hint = (
            "failed to create capture session: check the ribbon cable and sensor-id, that no "
            "other process holds the camera, restart nvargus-daemon (sudo systemctl restart "
            "nvargus-daemon); in a container mount /tmp/argus_socket"
        )
        opener = _capture_opener(
            csi_pipeline(int(target), options), cv2.CAP_GSTREAMER, f"csi://{target}", hint, options
        )
        return LiveSource(opener, f"csi://{target}", options, post_flip=False)
    if kind == "v4l2":
        device = f"/dev/video{target}" if target.isdigit() else target
        present = _video_devices()
        hint = (
            "cannot open the camera ({}; cameras present: {}); check the cable, permissions "
            "(group video) and that no other process holds it; in a container pass "
            "--device {}".format(
                "no such device" if linux and not Path(device).exists() else "it did not start",
                ", ".join(present) or "none",
                device,
            )
        )
        capture_target: Any = int(target) if target.isdigit() else device
        api = cv2.CAP_V4L2 if linux else cv2.CAP_ANY
        name = f"camera {target}" if target.isdigit() else device
        return LiveSource(_capture_opener(capture_target, api, name, hint, options), name, options)
    shown = redact(target)
    hint = (
        "cannot open the stream (check the address, credentials, and that the camera is reachable)"
    )
    return LiveSource(_capture_opener(target, cv2.CAP_FFMPEG, shown, hint, options), shown, options)
