"""Frame sources in jetson-inference's URI vocabulary (docs/runtime.md, "Sources").

    csi://N                    Jetson CSI camera through GStreamer (nvarguscamerasrc)
    N, v4l2:///dev/videoN,
    /dev/videoN                USB / V4L2 camera
    rtsp://user:pass@host/path network camera (also rtsps, rtmp, http(s), udp)
    clip.mp4, file://clip.mp4  video file (mp4, mkv, avi, ...)
    photo.jpg                  one image
    folder/                    a folder of images, sorted by name

Every source iterates ``(frame, timestamp, index)`` (BGR uint8, seconds, 0-based) and has
``close()``. Files yield every frame in order (``loop`` plays them again); live sources run a
grabber thread that keeps only the newest frame and counts the ones it overwrote, because buffered
stale frames are what makes latency grow on live streams (docs/runtime.md, "Recurring problems").
A live frame's index is its number among the frames the grabber read, so a gap is a dropped frame. A
live stream that stops delivering is reopened with bounded exponential back-off, then ends with a
clear error.
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
from glimmer.runtime.core.images import is_image, list_images, read_image
from glimmer.runtime.stream.capture import (
    SourceOptions,
    _capture_opener,
    _cv2,
    _quiet_opencv,
    _video_devices,
    csi_pipeline,
    gstreamer_available,
    redact,
)

Frame = Tuple[np.ndarray, float, int]

VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://")
_CV2_FLIP = {"horizontal": 1, "vertical": 0, "rotate-180": -1}


class Source(abc.ABC):
    """An iterator of ``(frame, timestamp, index)`` with ``close()``; also a context manager."""

    #: live sources drop stale frames; file sources deliver every frame
    live = False

    def __init__(self, description: str) -> None:
        self.description = description
        self._index = 0
        self._closed = False

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
    rate)."""

    def __init__(self, path: Path, options: Optional[SourceOptions] = None) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.options = options or SourceOptions()
        self._plays = 0
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
                timestamp = self._index / self._rate if self._rate else time.time()
                return self._emit(_flipped(frame, self.options.flip), timestamp)
            self._plays += 1
            if self.options.loop and self._plays >= self.options.loop:
                break
            if self._index == 0:
                raise GlimmerError(f"{self.path}: the video holds no decodable frame")
            # Reopen rather than seek to 0: seeking is unreliable for some containers and codecs.
            self._cap.release()
            self._cap = self._open()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()


class ImageListSource(Source):
    """One image or a sorted folder of images; undecodable files are skipped with a warning."""

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
            return self._emit(_flipped(frame, self.options.flip), time.time())
        raise StopIteration


class LiveSource(Source):
    """A camera or stream read by a grabber thread that keeps only the newest frame.

    ``opener`` returns an opened ``cv2.VideoCapture``-like object or raises :class:`GlimmerError`;
    it is called again to reconnect.
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
        self._cap = opener()
        # Asked once, before the grabber starts: captures are not safe to query during a read.
        self._rate = float(self._cap.get(_cv2().CAP_PROP_FPS) or 0.0)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Optional[Frame] = None
        self._error: Optional[GlimmerError] = None
        self._dropped = 0
        self._grabbed = 0
        self.reconnects = 0
        self._thread = threading.Thread(target=self._grab, name="glimmer-grabber", daemon=True)
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

    def _grab(self) -> None:
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if self._stop.is_set():
                break
            if not ok or frame is None:
                if not self._reconnect():
                    return
                continue
            stamp = time.time()
            frame = _flipped(frame, self._flip)
            with self._cond:
                if self._latest is not None:
                    self._dropped += 1
                self._latest = (frame, stamp, self._grabbed)
                self._grabbed += 1
                self._cond.notify_all()

    def _reconnect(self) -> bool:
        """Reopen with exponential back-off; False (and a pending error) when every attempt
        failed."""
        opts = self.options
        delay, waited, reason = opts.backoff_s, 0.0, "no frame"
        self._cap.release()
        for _attempt in range(opts.retries):
            if self._stop.wait(delay):
                return False
            waited += delay
            try:
                self._cap = self._opener()
                self.reconnects += 1
                return True
            except GlimmerError as exc:
                reason = str(exc)
            delay = min(delay * 2.0, opts.max_backoff_s)
        with self._cond:
            self._error = GlimmerError(
                f"{self.description}: the stream stopped delivering frames and {opts.retries} "
                f"reconnect attempts over {waited:.1f} s failed (last: {reason})"
            )
            self._cond.notify_all()
        return False

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
        # Releasing under a read still in flight can crash some capture backends: leave it to exit.
        if not self._thread.is_alive():
            self._cap.release()


# -- URI parsing and opening ---------------------------------------------------------------------


def parse_uri(uri: str) -> Tuple[str, str]:
    """``(kind, target)`` with kind one of csi, v4l2, network, video, image, folder.

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
    if not path.exists():
        raise GlimmerError(
            f"source {text}: no such file or folder (cameras: --camera N, csi://N, "
            "v4l2:///dev/videoN; streams: rtsp://...)"
        )
    if is_image(path):
        return "image", str(path)
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
