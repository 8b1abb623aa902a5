"""OpenCV capture for the sources: the options users set, device probing, GStreamer pipelines, and
opens that are bounded in time and never block Ctrl-C.

Kept apart from :mod:`glimmer.runtime.stream.sources` (what a source is and which one a URI opens)
because this is the part that talks to OpenCV's VideoCapture and to the Jetson's camera stack.
"""

import contextlib
import glob
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

from glimmer.runtime.core.errors import GlimmerError

FLIPS = ("none", "horizontal", "vertical", "rotate-180")
# nvvidconv's flip-method: the flip happens in the ISP/VIC, not on the CPU.
_NVVIDCONV_FLIP = {"none": 0, "rotate-180": 2, "horizontal": 4, "vertical": 6}
CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={cw},height={ch},"
    "format=NV12,framerate={rate}/1 ! nvvidconv flip-method={flip} ! video/x-raw,width={w},"
    "height={h},format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 "
    "max-buffers=1 sync=false"
)


@dataclass
class SourceOptions:
    """What users expect to set on a source (docs/runtime.md, "Sources").

    Attributes:
        width, height, rate: requested capture size and frame rate (cameras; ignored for files).
        loop: how many times a video file or image folder is played; 0 plays forever.
        flip: ``none``, ``horizontal``, ``vertical`` or ``rotate-180``.
        retries: reconnect attempts for a live stream that stops delivering.
        backoff_s: first reconnect delay; doubles each attempt, capped at ``max_backoff_s``.
        stall_timeout_s: a live source with no new frame for this long is stalled: reconnected.
        connect_timeout_s: the longest one open (connect) of a camera or stream may take.
    """

    width: Optional[int] = None
    height: Optional[int] = None
    rate: Optional[float] = None
    loop: int = 1
    flip: str = "none"
    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    stall_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.flip not in FLIPS:
            raise GlimmerError(f"source flip must be one of {', '.join(FLIPS)}, got {self.flip!r}")
        if self.loop < 0:
            raise GlimmerError(f"source loop must be 0 (forever) or more, got {self.loop}")
        if self.retries < 0:
            raise GlimmerError(f"source retries must be 0 or more, got {self.retries}")
        for name in ("stall_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise GlimmerError(f"source {name} must be more than 0, got {getattr(self, name)}")


def _cv2():
    from glimmer.runtime.core.preprocess import _cv2 as load

    return load()


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log while probing devices: its multi-line warnings would bury our
    one."""
    cv2 = _cv2()
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is not None:  # OpenCV 5 (and 4.x builds that expose cv2.utils.logging)
        get, set_, silent = log.getLogLevel, log.setLogLevel, log.LOG_LEVEL_SILENT
    elif hasattr(cv2, "setLogLevel"):  # OpenCV 4.8 wheels and JetPack's 4.x: level 0 is silent
        get, set_, silent = cv2.getLogLevel, cv2.setLogLevel, 0
    else:
        yield
        return
    previous = get()
    set_(silent)
    try:
        yield
    finally:
        set_(previous)


def gstreamer_available() -> bool:
    """Whether the installed OpenCV was built with GStreamer (PyPI wheels are not; JetPack's is)."""
    match = re.search(r"GStreamer:\s*(\w+)", _cv2().getBuildInformation())
    return bool(match) and match.group(1).upper() == "YES"


def redact(uri: str) -> str:
    """A URI fit for logs: ``rtsp://user:pass@host`` -> ``rtsp://user:***@host``."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def csi_pipeline(sensor: int, options: SourceOptions) -> str:
    """The nvarguscamerasrc pipeline (docs/runtime.md); 1280x720 capture unless a size is asked."""
    width, height = options.width or 1280, options.height or 720
    return CSI_PIPELINE.format(
        sensor=sensor,
        cw=width,
        ch=height,
        rate=int(options.rate or 30),
        flip=_NVVIDCONV_FLIP[options.flip],
        w=width,
        h=height,
    )


def _video_devices() -> List[str]:
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


def ffmpeg_timeouts(options: SourceOptions) -> List[int]:
    """``VideoCapture`` open parameters that bound FFmpeg's own open and read waits (30 s each
    by default), where this OpenCV has them: they came with opencv/opencv#20549 (August 2021, so
    4.5.4 on; both wheels here, 4.8 and 5.0, honour them). A build without them (JetPack's may
    lack them) gets none and relies on the thread bounds alone; its abandoned calls then end
    only when FFmpeg's 30 s do.

    Both are set a little longer than our own bounds (``connect_timeout_s``, the stall watchdog),
    so ours fire first with a clear message and FFmpeg's only ends the abandoned call soon after,
    which lets its thread release the capture. Property names:
    https://docs.opencv.org/4.x/d4/d15/group__videoio__flags__base.html
    """
    cv2 = _cv2()
    open_key = getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None)
    read_key = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
    if open_key is None or read_key is None:
        return []
    open_ms = int((options.connect_timeout_s + 1.0) * 1000)
    read_ms = int((options.stall_timeout_s + max(1.0, options.stall_timeout_s)) * 1000)
    return [int(open_key), open_ms, int(read_key), read_ms]


def _video_capture(target: Any, api: int, params: List[int]) -> Any:
    cv2 = _cv2()
    if params:
        try:
            return cv2.VideoCapture(target, api, params)
        except (TypeError, cv2.error):  # bindings without the parameters overload (< 4.5.2)
            pass
    return cv2.VideoCapture(target, api)


def _capture_opener(
    target: Any, api: int, describe: str, hint: str, options: SourceOptions
) -> Callable[[], Any]:
    params = ffmpeg_timeouts(options) if api == _cv2().CAP_FFMPEG else []

    def open_capture():
        cv2 = _cv2()
        with _quiet_opencv():
            cap = _video_capture(target, api, params)
            if cap.isOpened():
                if options.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
                if options.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
                if options.rate:
                    cap.set(cv2.CAP_PROP_FPS, options.rate)
                # The driver's own queue is the first place stale frames pile up.
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            raise GlimmerError(f"{describe}: {hint}")
        return cap

    return open_capture


class _OpenCall:
    """One ``opener()`` on a helper thread. A caller that stops waiting abandons it; the capture
    it opens later is then released on the helper thread, never leaked or handed out."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._abandoned = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="glimmer-open", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            cap = self._opener()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self.error = exc
            return
        with self._lock:
            if not self._abandoned:
                self.result = cap
                return
        cap.release()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            cap, self.result = self.result, None
        if cap is not None:  # finished between the last wait and now
            cap.release()


def open_bounded(
    opener: Callable[[], Any],
    describe: str,
    timeout_s: float,
    stop: Optional[threading.Event] = None,
) -> Any:
    """``opener()`` within ``timeout_s``, or a :class:`GlimmerError`; None once ``stop`` is set.

    The open runs on a helper thread and this thread waits in short steps, because an open
    blocked inside OpenCV cannot be interrupted: Ctrl-C (KeyboardInterrupt) still reaches the main
    thread at once, and a camera that accepts a connection and never answers costs
    ``timeout_s``, not FFmpeg's 30 s.
    """
    call = _OpenCall(opener)
    deadline = time.monotonic() + timeout_s
    try:
        while call.thread.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                raise GlimmerError(
                    f"{describe}: no answer within {timeout_s:.1f} s (connect timeout); check the "
                    "address and that the camera is reachable"
                )
            if stop is not None and stop.is_set():
                break
            call.thread.join(min(left, 0.1))
    except BaseException:
        call.abandon()
        raise
    if stop is not None and stop.is_set():
        call.abandon()
        return None
    if call.error is not None:
        raise call.error
    return call.result
