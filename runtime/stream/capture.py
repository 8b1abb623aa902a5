"""OpenCV capture for the sources: the options users set, device probing, GStreamer pipelines.

Kept apart from :mod:`glimmer.runtime.stream.sources` (what a source is and which one a URI opens)
because this is the part that talks to OpenCV's VideoCapture and to the Jetson's camera stack.
"""

import contextlib
import glob
import re
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
    """

    width: Optional[int] = None
    height: Optional[int] = None
    rate: Optional[float] = None
    loop: int = 1
    flip: str = "none"
    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.flip not in FLIPS:
            raise GlimmerError(f"source flip must be one of {', '.join(FLIPS)}, got {self.flip!r}")
        if self.loop < 0:
            raise GlimmerError(f"source loop must be 0 (forever) or more, got {self.loop}")


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


def _capture_opener(
    target: Any, api: int, describe: str, hint: str, options: SourceOptions
) -> Callable[[], Any]:
    def open_capture():
        cv2 = _cv2()
        with _quiet_opencv():
            cap = cv2.VideoCapture(target, api)
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
            raise GlimmerError(f"{describe}: {hint}")
        return cap

    return open_capture
